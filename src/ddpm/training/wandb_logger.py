"""Lightning's WandbLogger, made to read well in a dashboard (W&B's, or `wandb leet` in a terminal)."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, less what a user cannot act on:

    - Lightning always passes `anonymous` to wandb.init (None when not asked for), and wandb >= 0.2x warns on every
      run that the setting has no effect; the key is dropped before the run starts.
    - Lightning adds `epoch` to every logged row. Training here is counted in steps (an epoch of MNIST-5k is 70 of
      them), so `epoch` would only be one more panel beside the step counter: it is left out.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning keeps the wandb.init arguments here
            self._wandb_init.pop("anonymous", None)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
