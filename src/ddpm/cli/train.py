"""`python train.py`: compose the config, check it, build data / model / trainer, fit, return the metric."""

from __future__ import annotations

import logging
import signal
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.cli import resolvers  # noqa: F401  (registers ${floordiv:...})
from ddpm.cli.checkpoint import check_resume, find_last_checkpoint
from ddpm.cli.errors import building, exit_on_config_error
from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from ddpm.errors import ConfigError
from ddpm.training import DiffusionModule

log = logging.getLogger(__name__)

# Lightning warns on every mid-epoch resume unless the DataLoader itself is stateful; ours resumes through the
# DataModule's state_dict (EpochSampler), so the warning is wrong here.
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion:
    """The GaussianDiffusion of cfg.schedule (betas) and cfg.diffusion (objective, variance, clipping)."""
    betas = building("schedule", lambda: make_beta_schedule(**cfg.schedule))
    return building("diffusion", lambda: GaussianDiffusion(betas, **cfg.diffusion))


def build_network(cfg: DictConfig) -> torch.nn.Module:
    """The network of cfg.model (its `compile` switch is the module's business, not the network's)."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("compile", None)
    return building("model", lambda: hydra.utils.instantiate(model_cfg))


def build_module(cfg: DictConfig) -> DiffusionModule:
    """The DiffusionModule (network, EMA, diffusion, optimizer settings) described by cfg."""
    diffusion = build_diffusion(cfg)
    net = build_network(cfg)
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
            noise_seed=cfg.get("seed") or 0,
            compile=bool(cfg.model.get("compile", False)),
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
    """Fit the model; returns the final value of cfg.optimized_metric (what a sweeper minimises)."""
    check_config(cfg)
    name_sweep_job(cfg)
    datamodule = building("data", lambda: hydra.utils.instantiate(cfg.data))
    datamodule.check()
    if torch.cuda.is_available():  # TF32 matmuls and convolutions on Ampere and later; CPU math is left alone
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
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
    datamodule.configure_batch(trainer.world_size, trainer.accumulate_grad_batches)
    ckpt_path = resume_path(cfg)
    if ckpt_path is not None:
        check_resume(module, ckpt_path)
        log.info("resuming from %s", ckpt_path)
    for lg in loggers:
        lg.log_hyperparams({"model/params": module.num_parameters})
    log.info("model: %s, %.2fM parameters", cfg.model._target_, module.num_parameters / 1e6)
    log.info("run directory: %s", cfg.paths.output_dir)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:  # a sweep runs its jobs in one process: each job's W&B run must end before the next starts
        for lg in loggers:
            if isinstance(lg, WandbLogger) and trainer.is_global_zero and lg._experiment is not None:
                lg.experiment.finish(exit_code=0 if trainer.state.status == TrainerStatus.FINISHED else 1)

    return optimized_value(trainer.callback_metrics, cfg.get("optimized_metric") or "val/loss")


def optimized_value(metrics: dict[str, Any], name: str) -> float | None:
    """The metric `name`, or the one metric named `name_*` (`val/fid` finds val/fid_256_ddim50). Missing: a sweep
    cannot go on without it (ConfigError); a single run only warns."""
    matches = [name] if name in metrics else [k for k in metrics if k.startswith(f"{name}_")]
    if len(matches) == 1:
        return float(metrics[matches[0]])
    message = (
        f"optimized_metric={name} was not logged by this run (logged: {', '.join(sorted(metrics)) or 'nothing'}): "
        "set optimized_metric to one of them"
    )
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(message)
    log.warning(message)
    return None


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume: cfg.ckpt_path (`last`: the newest checkpoints/last.ckpt of this task's runs); with
    none given, the newest checkpoint the run directory already holds (a requeued SLURM job restarts in it)."""
    path = cfg.get("ckpt_path")
    if path == "last":
        return str(find_last_checkpoint(Path(cfg.paths.log_dir) / cfg.task_name / "runs"))
    if path is not None:
        return path
    # a requeued job: its own last.ckpt, or the newer hpc_ckpt_<n>.ckpt Lightning saved on SLURM's SIGUSR1
    out = Path(cfg.paths.output_dir)
    own = [p for p in (out / "checkpoints" / "last.ckpt", *out.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return str(max(own, key=lambda p: p.stat().st_mtime)) if own else None


def name_sweep_job(cfg: DictConfig) -> None:
    """In a multirun (-m), put every job in one W&B group named after the sweep, each named by its overrides."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if not wandb or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    with open_dict(cfg):
        if wandb.get("group") is None:
            wandb.group = f"{cfg.task_name}-{Path(hc.sweep.dir).name}"
        if wandb.get("name") is None:
            wandb.name = hc.job.override_dirname or f"job{hc.job.num}"


def main(cfg: DictConfig) -> Any:
    """Entry point called by the root train.py (decorated there with @hydra.main)."""
    try:
        return exit_on_config_error(lambda: train(cfg))
    except SIGTERMException:
        # LastCheckpoint saved the run: exit as a terminated process does (128 + 15)
        raise SystemExit(128 + signal.SIGTERM) from None
