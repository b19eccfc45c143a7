"""FID and KID of the EMA weights' samples against the held-out split's cached Inception statistics, after validations
and at the end of training."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ddpm.diffusion import make_sampler
from ddpm.metrics import fid_key, install_reference, local_weights, make_fid, score_samples


class SampleFID(L.Callback):
    """Draw `n` samples with the EMA weights and log FID and KID against the held-out split: after every
    `every_n_validations`-th validation (0: never) and, with `at_train_end`, once more when training ends (so a run
    that stops on max_time, between validations, still reports its final quality).

    `sampler` is a sampler node (conf/sampler/*.yaml; train.py passes its `sampler` group). The metric is named
    val/fid_<n>_<sampler> (e.g. val/fid_1k_ddim50): FID at different N is not comparable. KID comes from the same
    Inception features: val/kid_<n>_<sampler> (mean over subsets) and val/kid_std_<n>_<sampler>.
    Under DDP every rank draws its own share of the n samples from its own seed and torchmetrics sums the feature
    statistics across ranks: no duplicated samples, no images gathered on rank 0. The held-out reference statistics
    are computed once (rank 0), cached on disk, and installed on rank 0 only (the other ranks add zeros).
    The Inception network is loaded when the callback is built, so missing weights stop a run before training.
    With `best_path` set, the checkpoint of the lowest FID so far is written there (the best value survives resume).
    With `required=False` (the default run's end-of-training score) and no local weights (`weights_path`,
    $DDPM_FID_WEIGHTS or the torch hub cache), the callback says once how to enable it and does nothing: it never
    downloads.
    """

    def __init__(
        self,
        sampler: Mapping[str, Any],
        n: int = 256,
        batch_size: int = 128,
        seed: int = 12345,
        weights_path: str | None = None,
        cache_dir: str = ".cache/fid",
        reference_n: int | None = None,
        every_n_validations: int = 1,
        best_path: str | None = None,
        at_train_end: bool = False,
        required: bool = True,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"FID needs n >= 2 samples, got n={n!r}")
        if every_n_validations < 0:
            raise ValueError(f"every_n_validations must be 0 (never) or more, got {every_n_validations}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.sampler = dict(sampler)
        self.weights_path, self.cache_dir, self.reference_n = weights_path, cache_dir, reference_n
        self.every_n_validations, self.at_train_end = every_n_validations, at_train_end
        self.enabled = required or local_weights(weights_path) is not None
        self.metric = make_fid(weights_path) if self.enabled else None
        if not self.enabled:
            rank_zero_info(
                "no FID / KID at the end of training: no local Inception weights (set $DDPM_FID_WEIGHTS to the .pth "
                "file, see README, Evaluation)"
            )
        self._validations = 0
        self._reference_loaded = False
        self.best_path = best_path
        self.best: float | None = None
        self._improved = False
        # how long the end-of-training score took (the run's summary says)
        self.end_seconds: float | None = None

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
        sampler = make_sampler(pl_module.diffusion, **self.sampler)
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
        if trainer.sanity_checking or not self.enabled:
            return
        self._validations += 1
        if not self.every_n_validations or (self._validations - 1) % self.every_n_validations:
            return
        scores = self.compute(trainer, pl_module)
        for key, value in scores.items():
            pl_module.log(key, value, sync_dist=False)
        fid = next(v for k, v in scores.items() if k.startswith("val/fid_"))
        self._improved = self.best is None or fid < self.best
        if self._improved:
            self.best = fid

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final score: logged at the last step to every logger and put in callback_metrics (the run's summary,
        a sweeper's objective). Not after an interrupted run (SIGTERM: the run resumes and scores at its end)."""
        if not (self.enabled and self.at_train_end) or trainer.received_sigterm:
            return
        start = time.monotonic()
        scores = self.compute(trainer, pl_module)
        self.end_seconds = time.monotonic() - start
        for key, value in scores.items():
            trainer.callback_metrics[key] = torch.tensor(value, dtype=torch.float64)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scores, step=trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._improved and self.best_path and not trainer.sanity_checking:
            trainer.save_checkpoint(self.best_path)  # every rank takes part; rank 0 writes
        self._improved = False

    def state_dict(self) -> dict:
        return {"best": self.best, "validations": self._validations}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self._validations = state.get("validations", 0)
