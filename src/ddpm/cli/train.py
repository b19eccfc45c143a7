"""`python train.py`: compose the config, check it, build data / model / trainer, fit, return the metric."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import wandb
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from ddpm.build import build_diffusion, build_module, build_sampler
from ddpm.checkpoint import check_resume, find_last_checkpoint
from ddpm.cli import run_record
from ddpm.cli.errors import run_job
from ddpm.cli.sweep_job import check_optimized_metric, name_sweep_job, optimized_value
from ddpm.errors import CONFIG_MISTAKES, ConfigError, building
from ddpm.host_memory import retain_freed_memory
from ddpm.schema import check_train
from ddpm.training import LastCheckpoint
from ddpm.training.quiet import quiet_lightning
from ddpm.training.run_report import report_run

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Checks that need no building: catch what would otherwise fail hours into a run."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    check_train(cfg)  # ranges; the types were checked when Hydra composed the config (ddpm.schema)
    check_optimized_metric(cfg)
    diffusion = build_diffusion(cfg)
    check_forgets_the_data(diffusion, cfg.schedule)
    # the validation sampler (grid, FID) is built at each validation: build it once now to check its node
    build_sampler(diffusion, cfg.sampler)


# alphabar_T above this leaves sqrt(alphabar_T) > 0.1 of the data in x_T, which the sampler's x_T ~ N(0, I) lacks
MAX_ALPHABAR_T = 0.01


def check_forgets_the_data(diffusion, schedule: DictConfig) -> None:
    """x_T must be (nearly) pure noise, as the sampler's start x_T ~ N(0, I) assumes: alphabar_T <= MAX_ALPHABAR_T."""
    alphabar_T = float(diffusion.alphas_cumprod[-1])
    if alphabar_T > MAX_ALPHABAR_T:
        raise ConfigError(
            f"schedule {schedule.name} with schedule.num_timesteps={schedule.num_timesteps} ends at alphabar_T = "
            f"{alphabar_T:.3g}: x_T still shows the data (at most {MAX_ALPHABAR_T} is noise enough): use more "
            "timesteps (e.g. schedule.num_timesteps=1000) or a larger schedule.beta_end"
        )


def train(cfg: DictConfig) -> float | None:
    """Fit the model; returns the final value of cfg.optimized_metric (what a sweeper minimises)."""
    quiet_lightning()
    check_config(cfg)
    retain_freed_memory()  # no page faults on each step's activations: see ddpm.host_memory
    name_sweep_job(cfg)
    datamodule = building("data", lambda: hydra.utils.instantiate(cfg.data))
    datamodule.check()
    resolve_num_classes(cfg, datamodule)
    use_tf32()
    if cfg.get("seed") is not None:  # before building the network: the seed fixes the initial weights
        L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    ckpt_path = resume_path(cfg)
    resumed_step = None if ckpt_path is None else resume_point(module, ckpt_path, cfg)
    if resumed_step is not None and nothing_left_to_train(cfg, ckpt_path, resumed_step):
        return None

    trainer = fit(cfg, module, datamodule, ckpt_path, resumed_step)
    return optimized_value(trainer.callback_metrics, cfg.get("optimized_metric") or "val/loss")


def use_tf32() -> None:
    """TF32 matmuls and convolutions on a GPU (Ampere and later); CPU math is left alone."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def fit(cfg: DictConfig, module, datamodule, ckpt_path: str | None, resumed_step: int | None) -> L.Trainer:
    """Build the run's callbacks, loggers and Trainer from cfg, fit `module` (resuming `ckpt_path`), end with the run's
    report; a stop by SIGTERM or Ctrl-C says where the run was saved and exits as the signal does. train.py and
    distill.py share it."""
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
        "trainer",
        lambda: hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False),
        mistakes=(*CONFIG_MISTAKES, MisconfigurationException),  # e.g. Trainer(devices=0)
    )
    datamodule.configure_batch(trainer.world_size, trainer.accumulate_grad_batches)
    datamodule.check_batches(trainer.world_size)
    for lg in loggers:
        lg.log_hyperparams({"model/params": module.num_parameters})
    log.info("model: %s, %.2fM parameters", cfg.model._target_, module.num_parameters / 1e6)
    log.info("run directory: %s", cfg.paths.output_dir)

    start = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.is_global_zero and trainer.state.status == TrainerStatus.FINISHED:
            if resumed_step is not None and trainer.global_step == resumed_step:
                log.warning(
                    "nothing left to train: the run resumed at step %d had already reached its end "
                    "(trainer.max_steps, trainer.max_time or max_epochs): raise it to train on",
                    resumed_step,
                )
            report_run(trainer, Path(cfg.paths.output_dir), time.monotonic() - start)
    except (
        SIGTERMException
    ):  # LastCheckpoint saved the run: say so, and exit as a process ended by the signal does
        stop = next((cb for cb in callbacks if isinstance(cb, LastCheckpoint)), None)
        if trainer.is_global_zero and stop is not None and stop.saved is not None:
            log.warning(stop.stopped_message(trainer.global_step))
        raise SystemExit(128 + (stop.stop_signal if stop and stop.stop_signal else signal.SIGTERM)) from None
    finally:  # a sweep runs its jobs in one process: each job's W&B run must end before the next starts
        if trainer.is_global_zero and any(isinstance(lg, WandbLogger) for lg in loggers) and wandb.run:
            wandb.finish(exit_code=0 if trainer.state.status == TrainerStatus.FINISHED else 1)

    return trainer


def resume_point(module, ckpt_path: str, cfg: DictConfig) -> int:
    """The step of the checkpoint this run resumes, checked against the run's model before any logger or callback
    writes a file (a refusal also puts the run folder's .hydra/ record back as it was); says what it resumes."""
    try:
        step = check_resume(module, ckpt_path, cfg)
    except ConfigError:
        run_record.restore()
        raise
    own = Path(cfg.paths.output_dir).resolve() in Path(ckpt_path).resolve().parents
    log.info("resuming %sfrom %s at step %d", "the run in this folder " if own else "", ckpt_path, step)
    return step


def nothing_left_to_train(cfg: DictConfig, ckpt_path: str, step: int) -> bool:
    """Whether the checkpoint has already reached trainer.max_steps (then the run says so and writes nothing)."""
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps is None or not 0 < max_steps <= step:
        return False
    log.warning(
        "nothing left to train: %s is at step %d and trainer.max_steps=%d; raise trainer.max_steps to train on",
        ckpt_path,
        step,
        max_steps,
    )
    return True


def resolve_num_classes(cfg: DictConfig, datamodule) -> None:
    """model.num_classes=auto (condition=class) becomes the data's number of classes, stored in the run config so a
    checkpoint rebuilds the same network; a source without labels is refused in one sentence."""
    wanted = cfg.model.get("num_classes")
    if wanted is None:
        return
    if not cfg.data.get("labels"):
        raise ConfigError(
            f"model.num_classes={wanted} makes the network class-conditional, but the batches carry no labels: "
            "use condition=class (it sets both)"
        )
    datamodule.setup("fit")
    found = datamodule.num_classes
    if found is None:
        raise ConfigError(
            f"condition=class needs labelled data, but data source {cfg.data.source} has no labels "
            "(an image folder needs one subfolder per class): use labelled data or condition=none"
        )
    if wanted == "auto":
        cfg.model.num_classes = found
    elif wanted != found:
        raise ConfigError(
            f"model.num_classes={wanted} but the data has {found} classes: set model.num_classes=auto"
        )


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


def main(cfg: DictConfig) -> Any:
    """Entry point called by the root train.py (decorated there with @hydra.main)."""
    return run_job(lambda: train(cfg), interrupted="interrupted before training started: nothing was saved")
