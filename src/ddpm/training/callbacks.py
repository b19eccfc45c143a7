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

from ddpm.diffusion import Sampler, make_sampler
from ddpm.metrics import (
    fid_images,
    fid_key,
    load_or_compute_reference,
    make_fid,
    reference_cache_path,
    resolve_weights,
    set_reference,
)


def to_unit_interval(x: Tensor) -> Tensor:
    """Map model-space images [-1, 1] to [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class SampleGrid(L.Callback):
    """After each validation (and once when training ends), sample `n` images with the EMA weights and log a grid.

    The starting noise comes from a fixed seed, so grids from successive validations show the same samples evolving.
    The PNG goes to `<dirpath>/step_<global_step>.png` (default: the trainer's run directory / samples).
    `compile=True` samples with the network under torch.compile (CUDA graphs on a GPU; see `compiled_network`).
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
        compile: bool = False,
    ) -> None:
        self.n, self.sampler_name, self.steps, self.eta, self.spacing = n, sampler, steps, eta, spacing
        self.compile = compile
        self.seed, self.dirpath, self.every_n_validations = seed, dirpath, every_n_validations
        self._validations = 0
        self._last_step = -1

    def _sampler(self, pl_module: L.LightningModule):
        kwargs = {"steps": self.steps, "spacing": self.spacing, "compile": self.compile}
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
    """Rich progress bar whose description counts optimizer steps against max_steps (runs here are step-based).

    The bar moves every step; the metrics shown beside it (the loss) are read every `metrics_every_n_steps`
    training steps, since reading a GPU tensor makes the host wait for the GPU.
    """

    def __init__(self, *args, metrics_every_n_steps: int = 10, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_every_n_steps = max(1, metrics_every_n_steps)

    def _update_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.training and trainer.global_step % self.metrics_every_n_steps:
            return
        super()._update_metrics(trainer, pl_module)

    def _get_train_description(self, current_epoch: int) -> str:
        max_steps = self.trainer.max_steps
        total = f"/{max_steps}" if max_steps and max_steps > 0 else ""
        return f"Epoch {current_epoch} · step {self.trainer.global_step}{total}"


class SampleFID(L.Callback):
    """After validation, draw `n` samples with the EMA weights and log FID against the held-out split.

    The metric is named val/fid_<n>_<sampler> (e.g. val/fid_1k_ddim50): FID at different N is not comparable.
    Under DDP every rank draws its own share of the n samples from its own seed and torchmetrics sums the feature
    statistics across ranks: no duplicated samples, no images gathered on rank 0. The held-out reference statistics
    are computed once (rank 0), cached on disk, and installed on rank 0 only (the other ranks add zeros).
    The Inception network is loaded when the callback is built, so missing weights stop a run before training.
    With `best_path` set, the checkpoint of the lowest FID so far is written there (the best value survives resume).
    `compile=True` samples with the network under torch.compile (CUDA graphs on a GPU; see `compiled_network`).
    """

    def __init__(
        self,
        n: int = 256,
        sampler: str = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        spacing: str = "uniform",
        batch_size: int = 128,
        seed: int = 12345,
        weights_path: str | None = None,
        cache_dir: str = ".cache/fid",
        reference_n: int | None = None,
        every_n_validations: int = 1,
        best_path: str | None = None,
        compile: bool = False,
    ) -> None:
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got n={n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.sampler_kwargs = {
            "steps": steps,
            "spacing": spacing,
            "compile": compile,
            **({"eta": eta} if sampler == "ddim" else {}),
        }
        self.sampler_name = sampler
        self.weights_path, self.cache_dir, self.reference_n = weights_path, cache_dir, reference_n
        self.every_n_validations = every_n_validations
        self.metric = make_fid(weights_path)
        self._validations = 0
        self._reference_loaded = False
        self.best_path = best_path
        self.best: float | None = None
        self._improved = False

    @torch.no_grad()
    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[str, torch.Tensor]:
        self.metric.to(pl_module.device)
        if not self._reference_loaded:
            install_reference(
                self.metric,
                trainer.datamodule,
                self.cache_dir,
                self.reference_n,
                self.weights_path,
                is_rank_zero=trainer.is_global_zero,
                barrier=trainer.strategy.barrier,
            )
            self._reference_loaded = True
        sampler = make_sampler(pl_module.diffusion, self.sampler_name, **self.sampler_kwargs)
        value = fid_of_samples(
            self.metric,
            pl_module,
            sampler,
            self.n,
            self.batch_size,
            self.seed,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return f"val/{fid_key(self.n, sampler.label)}", value

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        key, value = self.compute(trainer, pl_module)
        pl_module.log(key, value, sync_dist=False)
        self._improved = self.best is None or float(value) < self.best
        if self._improved:
            self.best = float(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._improved and self.best_path and not trainer.sanity_checking:
            trainer.save_checkpoint(self.best_path)  # every rank takes part; rank 0 writes
        self._improved = False

    def state_dict(self) -> dict:
        return {"best": self.best, "validations": self._validations}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self._validations = state.get("validations", 0)


def install_reference(
    metric,
    datamodule,
    cache_dir: str,
    reference_n: int | None,
    weights_path: str | None,
    *,
    is_rank_zero: bool = True,
    barrier=None,
) -> int:
    """Put the held-out split's reference statistics into `metric` (cached on disk; rank 0 only under DDP, the
    other ranks hold zeros that the cross-rank sum adds in). Returns the number of reference images."""
    from torch.utils.data import DataLoader, Subset

    held_out = datamodule.val_set
    n_ref = min(reference_n or len(held_out), len(held_out))
    path = reference_cache_path(
        cache_dir,
        datamodule.source,
        "held_out",
        datamodule.image_size,
        datamodule.channels,
        n_ref,
        resolve_weights(weights_path),
    )
    stats = None
    if is_rank_zero:
        loader = DataLoader(Subset(held_out, range(n_ref)), batch_size=100)
        stats = load_or_compute_reference(metric, loader, path)
    if barrier is not None:
        barrier()
    set_reference(metric, stats)
    return n_ref


@torch.no_grad()
def fid_of_samples(
    metric,
    pl_module: L.LightningModule,
    sampler: Sampler,
    n: int,
    batch_size: int,
    seed: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    use_ema: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """FID of n fresh samples (this rank draws its share from seed + rank) against the installed reference."""
    metric.reset()  # fake features only: reset_real_features=False
    share = n // world_size + (1 if rank < n % world_size else 0)
    generator = torch.Generator(device=pl_module.device).manual_seed(seed + rank)
    for start in range(0, share, batch_size):
        count = min(batch_size, share - start)
        images = pl_module.sample(sampler, count, generator=generator, use_ema=use_ema, progress=progress)
        metric.update(fid_images(images), real=False)
    return metric.compute()
