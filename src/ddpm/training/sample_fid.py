"""Validation FID: samples of the EMA weights against the held-out split's cached Inception statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from ddpm.metrics import fid_key, install_reference, make_fid, score_samples
from ddpm.training.sample_grid import DEFAULT_SAMPLER, sampler_of


class SampleFID(L.Callback):
    """After validation, draw `n` samples with the EMA weights and log FID and KID against the held-out split.

    `sampler` is a sampler node (conf/sampler/*.yaml; train.py passes its `sampler` group). The metric is named
    val/fid_<n>_<sampler> (e.g. val/fid_1k_ddim50): FID at different N is not comparable. KID comes from the same
    Inception features: val/kid_<n>_<sampler> (mean over subsets) and val/kid_std_<n>_<sampler>.
    Under DDP every rank draws its own share of the n samples from its own seed and torchmetrics sums the feature
    statistics across ranks: no duplicated samples, no images gathered on rank 0. The held-out reference statistics
    are computed once (rank 0), cached on disk, and installed on rank 0 only (the other ranks add zeros).
    The Inception network is loaded when the callback is built, so missing weights stop a run before training.
    With `best_path` set, the checkpoint of the lowest FID so far is written there (the best value survives resume).
    """

    def __init__(
        self,
        n: int = 256,
        sampler: Mapping[str, Any] | None = None,
        batch_size: int = 128,
        seed: int = 12345,
        weights_path: str | None = None,
        cache_dir: str = ".cache/fid",
        reference_n: int | None = None,
        every_n_validations: int = 1,
        best_path: str | None = None,
    ) -> None:
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples, got n={n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.sampler = dict(sampler or DEFAULT_SAMPLER)
        self.weights_path, self.cache_dir, self.reference_n = weights_path, cache_dir, reference_n
        self.every_n_validations = every_n_validations
        self.metric = make_fid(weights_path)
        self._validations = 0
        self._reference_loaded = False
        self.best_path = best_path
        self.best: float | None = None
        self._improved = False

    @torch.no_grad()
    def compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """{val/fid_<n>_<sampler>: FID, val/kid_<n>_<sampler>: KID mean, val/kid_std_<n>_<sampler>: its std}."""
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
        sampler = sampler_of(pl_module.diffusion, self.sampler)
        scores = score_samples(
            self.metric,
            lambda count, generator: pl_module.sample(sampler, count, generator=generator),
            self.n,
            self.batch_size,
            self.seed,
            device=pl_module.device,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        return {  # no kid_std when every KID subset is all the images (see kid_from_features)
            f"val/{fid_key(self.n, sampler.label, name)}": scores[name]
            for name in ("fid", "kid", "kid_std")
            if scores[name] is not None
        }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        scores = self.compute(trainer, pl_module)
        for key, value in scores.items():
            pl_module.log(key, value, sync_dist=False)
        fid = next(v for k, v in scores.items() if k.startswith("val/fid_"))
        self._improved = self.best is None or fid < self.best
        if self._improved:
            self.best = fid

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._improved and self.best_path and not trainer.sanity_checking:
            trainer.save_checkpoint(self.best_path)  # every rank takes part; rank 0 writes
        self._improved = False

    def state_dict(self) -> dict:
        return {"best": self.best, "validations": self._validations}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self._validations = state.get("validations", 0)
