"""The console progress bar: rich, counting optimizer steps, reading the loss only every few steps."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Rich progress bar whose description counts optimizer steps against max_steps (runs here are step-based).

    The bar moves every step; the metrics shown beside it (the loss) are read every `metrics_every_n_steps`
    training steps, since reading a GPU tensor makes the host wait for the GPU.
    """

    def __init__(self, *args, metrics_every_n_steps: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_every_n_steps = max(1, metrics_every_n_steps)
        self._shown: dict[str, Any] = {}

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if not trainer.training or trainer.global_step % self.metrics_every_n_steps == 0:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown

    def _get_train_description(self, current_epoch: int) -> str:  # rich offers no public hook for the text
        max_steps = self.trainer.max_steps
        total = f"/{max_steps}" if max_steps and max_steps > 0 else ""
        return f"Epoch {current_epoch} · step {self.trainer.global_step}{total}"
