"""Callbacks: the validation sample grid (EMA weights, fixed seed), saved as PNG and sent to the logger."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from ddpm.diffusion import make_sampler


def to_unit_interval(x: Tensor) -> Tensor:
    """Map model-space images [-1, 1] to [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class SampleGrid(L.Callback):
    """After each validation (and once when training ends), sample `n` images with the EMA weights and log a grid.

    The starting noise comes from a fixed seed, so grids from successive validations show the same samples evolving.
    The PNG goes to `<dirpath>/step_<global_step>.png` (default: the trainer's run directory / samples).
    """

    def __init__(
        self,
        n: int = 64,
        sampler: str = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        spacing: str = "uniform",
        seed: int = 0,
        dirpath: str | None = None,
        every_n_validations: int = 1,
    ) -> None:
        self.n, self.sampler_name, self.steps, self.eta, self.spacing = n, sampler, steps, eta, spacing
        self.seed, self.dirpath, self.every_n_validations = seed, dirpath, every_n_validations
        self._validations = 0
        self._last_step = -1

    def _sampler(self, pl_module: L.LightningModule):
        kwargs = {"steps": self.steps, "spacing": self.spacing}
        if self.sampler_name == "ddim":
            kwargs["eta"] = self.eta
        return make_sampler(pl_module.diffusion, self.sampler_name, **kwargs)

    @rank_zero_only
    def make_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        if self._last_step == trainer.global_step:
            return None
        self._last_step = trainer.global_step
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        images = to_unit_interval(pl_module.sample(self._sampler(pl_module), self.n, generator=generator))
        grid = make_grid(
            images.float().cpu(), nrow=int(math.ceil(math.sqrt(self.n))), padding=2, pad_value=1.0
        )
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{trainer.global_step:07d}.png"
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="val/samples",
                    images=[str(path)],
                    step=trainer.global_step,
                    caption=[f"step {trainer.global_step}"],
                )
        return path

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations == 0:
            self.make_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.make_grid(trainer, pl_module)


class StepProgressBar(RichProgressBar):
    """Rich progress bar whose description counts optimizer steps against max_steps (runs here are step-based)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_steps = self.trainer.max_steps
        total = f"/{max_steps}" if max_steps and max_steps > 0 else ""
        return f"Epoch {current_epoch} · step {self.trainer.global_step}{total}"
