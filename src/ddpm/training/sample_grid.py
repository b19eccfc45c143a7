"""The validation sample grid: EMA weights, fixed starting noise, saved as PNG and sent to the logger."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm.diffusion import make_sampler
from ddpm.images import save_grid


class SampleGrid(L.Callback):
    """After each validation (and once when training ends), sample `n` images with the EMA weights and log a grid.

    `sampler` is a sampler node (conf/sampler/*.yaml; train.py passes its `sampler` group: there is no default here,
    so a grid built in code samples as the config says only when given the config's node). The starting noise comes
    from a fixed seed, so grids from successive validations show the same samples evolving. The PNG goes to
    `<dirpath>/step_<global_step>.png` (default: the trainer's run directory / samples). A class-conditional model's
    grid has one row per class (n // classes images each), drawn with the run's guidance scale.
    """

    def __init__(
        self,
        sampler: Mapping[str, Any],
        n: int = 64,
        seed: int = 0,
        dirpath: str | None = None,
        every_n_validations: int = 1,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the sample grid needs n >= 1 images, got n={n!r}")
        self.n, self.sampler = n, dict(sampler)
        self.seed, self.dirpath, self.every_n_validations = seed, dirpath, every_n_validations
        self._validations = 0
        self._last_step = -1

    @rank_zero_only
    def make_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        if self._last_step == trainer.global_step:
            return None
        self._last_step = trainer.global_step
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        sampler = make_sampler(pl_module.diffusion, **self.sampler)
        classes = getattr(pl_module, "num_classes", None)
        if classes is None:
            images, nrow = pl_module.sample(sampler, self.n, generator=generator), None
        else:  # one row per class, n // classes images each (at least one)
            nrow = max(1, self.n // classes)
            labels = torch.arange(classes).repeat_interleave(nrow)
            images = pl_module.sample(sampler, len(labels), generator=generator, labels=labels)
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "samples")
        path = save_grid(images, folder / f"step_{trainer.global_step:07d}.png", nrow=nrow)
        log_grid(trainer, "val/samples", path, f"step {trainer.global_step}")
        return path

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations == 0:
            self.make_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.make_grid(trainer, pl_module)


def log_grid(trainer: L.Trainer, key: str, path: Path, caption: str) -> None:
    """Send the PNG grid at `path` to the run's W&B logger (if any) as image `key` at the current step."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step, caption=[caption])
