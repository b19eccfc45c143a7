"""`python train.py`: compose the config, check it, build data / model / trainer, fit, return the metric."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from ddpm.cli import resolvers  # noqa: F401  (registers ${floordiv:...})
from ddpm.cli.errors import building, exit_on_config_error
from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from ddpm.errors import ConfigError
from ddpm.training import DiffusionModule

log = logging.getLogger(__name__)


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion:
    """The GaussianDiffusion of cfg.schedule (betas) and cfg.diffusion (objective, variance, clipping)."""
    betas = building("schedule", lambda: make_beta_schedule(**cfg.schedule))
    return building("diffusion", lambda: GaussianDiffusion(betas, **cfg.diffusion))


def build_module(cfg: DictConfig) -> DiffusionModule:
    """The DiffusionModule (network, EMA, diffusion, optimizer settings) described by cfg."""
    diffusion = build_diffusion(cfg)
    net = building("model", lambda: hydra.utils.instantiate(cfg.model))
    return building(
        "optim/ema",
        lambda: DiffusionModule(
            net,
            diffusion,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            adam_betas=tuple(cfg.optim.adam_betas),
            eps=cfg.optim.eps,
            warmup_steps=cfg.optim.warmup_steps,
            ema_decay=cfg.ema.decay,
            ema_warmup=cfg.ema.warmup,
            config=OmegaConf.to_container(cfg, resolve=True),
        ),
    )


def check_config(cfg: DictConfig) -> None:
    """Checks that need no building: catch what would otherwise fail hours into a run."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    if cfg.data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be at least 1, got {cfg.data.batch_size}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.optim.lr}")
    for name, cb in (cfg.get("callbacks") or {}).items():
        if cb and "sampler" in cb:
            building(
                f"callbacks.{name}",
                lambda cb=cb: make_sampler(build_diffusion(cfg), cb.sampler, steps=cb.steps),
            )


def train(cfg: DictConfig) -> float | None:
    """Fit the model; returns the final held-out loss (the value a sweeper minimises)."""
    check_config(cfg)
    datamodule = building("data", lambda: hydra.utils.instantiate(cfg.data))
    datamodule.check()
    if cfg.get("seed") is not None:  # before building the network: the seed fixes the initial weights
        L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)

    callbacks = [
        building(f"callbacks.{name}", lambda c=c: hydra.utils.instantiate(c))
        for name, c in (cfg.get("callbacks") or {}).items()
        if c
    ]
    loggers = [
        building(f"logger.{name}", lambda c=c: hydra.utils.instantiate(c))
        for name, c in (cfg.get("logger") or {}).items()
        if c
    ]
    # LearningRateMonitor refuses a Trainer without a logger; with none there is nothing for it to log to
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = building(
        "trainer", lambda: hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    )
    for lg in loggers:
        lg.log_hyperparams({"model/params": module.num_parameters})
    log.info("model: %s, %.2fM parameters", cfg.model._target_, module.num_parameters / 1e6)
    log.info("run directory: %s", cfg.paths.output_dir)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metric = trainer.callback_metrics.get("val/loss")
    return float(metric) if metric is not None else None


def main(cfg: DictConfig) -> Any:
    """Entry point called by the root train.py (decorated there with @hydra.main)."""
    return exit_on_config_error(lambda: train(cfg))
