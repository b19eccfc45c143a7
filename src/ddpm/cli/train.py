"""`python train.py`: compose the config, check it, build data / model / trainer, fit, return the metric."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.build import build_diffusion, build_module, build_sampler
from ddpm.checkpoint import check_resume, find_last_checkpoint
from ddpm.cli import run_record
from ddpm.cli.errors import in_sweep, run_job
from ddpm.errors import CONFIG_MISTAKES, ConfigError, building
from ddpm.host_memory import retain_freed_memory
from ddpm.schema import check_train
from ddpm.training import LastCheckpoint, RunClock, SampleFID

log = logging.getLogger(__name__)

# Console noise a user cannot act on. Lightning warns on every mid-epoch resume unless the DataLoader itself is
# stateful; ours resumes through the DataModule's state_dict (EpochSampler), so the warning is wrong here. It also
# warns that checkpoints load with weights_only=False (they are this project's own) and about its own use of torch's
# pytree API, and advertises a cloud logger on every run.
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
warnings.filterwarnings("ignore", message=".*`weights_only` was not set.*")
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda r: "litlogger" not in r.getMessage()
)
# ...and says, each time it saves a checkpoint at the end of a run, that it saves the whole state (as it should)
logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
    lambda r: "`weights_only` was not set" not in r.getMessage()
)


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


def sweeper_optimises() -> bool:
    """Whether this run is a trial of a sweeper that optimises train.py's return value (Optuna, ...). A grid sweep
    (Hydra's basic sweeper) and a single run need no return value."""
    if not in_sweep():
        return False
    return not str(HydraConfig.get().sweeper.get("_target_", "")).endswith(("BasicSweeper", "GridSweeper"))


def check_optimized_metric(cfg: DictConfig) -> None:
    """For a sweeper that optimises: stop before any trial trains if optimized_metric cannot be logged by this run
    (a validation metric in a run that ends before its first validation, FID without the FID callback)."""
    if not sweeper_optimises():
        return
    name = cfg.get("optimized_metric") or "val/loss"
    fid = (cfg.get("callbacks") or {}).get("fid")
    if name.startswith(("val/fid", "val/kid")):
        if not fid:
            raise ConfigError(f"optimized_metric={name} needs the FID callback: add callbacks=fid")
        if fid.get("at_train_end"):  # scored when training ends, whenever that is
            return
    max_steps, interval = cfg.trainer.get("max_steps", -1), cfg.trainer.get("val_check_interval")
    if name.startswith("val/") and isinstance(interval, int) and 0 < max_steps < interval:
        raise ConfigError(
            f"optimized_metric={name} is logged at validation, but trainer.max_steps={max_steps} ends before the "
            f"first one (trainer.val_check_interval={interval}): lower val_check_interval or raise max_steps"
        )


def train(cfg: DictConfig) -> float | None:
    """Fit the model; returns the final value of cfg.optimized_metric (what a sweeper minimises)."""
    check_config(cfg)
    retain_freed_memory()  # no page faults on each step's activations: see ddpm.host_memory
    name_sweep_job(cfg)
    datamodule = building("data", lambda: hydra.utils.instantiate(cfg.data))
    datamodule.check()
    resolve_num_classes(cfg, datamodule)
    if torch.cuda.is_available():  # TF32 matmuls and convolutions on Ampere and later; CPU math is left alone
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    if cfg.get("seed") is not None:  # before building the network: the seed fixes the initial weights
        L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    ckpt_path = resume_path(cfg)
    resumed_step = None if ckpt_path is None else resume_point(module, ckpt_path, cfg)
    if resumed_step is not None and nothing_left_to_train(cfg, ckpt_path, resumed_step):
        return None

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

    return optimized_value(trainer.callback_metrics, cfg.get("optimized_metric") or "val/loss")


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


def report_run(trainer: L.Trainer, out: Path, seconds: float) -> None:
    """A few lines when training ends: what the run reached and where its files are, with the next commands."""
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/loss", "val/"))
    }
    reached = " · ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())) or "no metrics logged"
    ckpt = out / "checkpoints" / "last.ckpt"
    grids = sorted((out / "samples").glob("step_*.png"))
    runs = sorted((out / "wandb").glob("offline-run-*")) + sorted((out / "wandb").glob("run-*"))
    lines = [
        f"run finished: step {trainer.global_step} in {seconds / 60:.1f} min; {reached}",
        f"  checkpoint: {ckpt}" if ckpt.is_file() else "  checkpoint: none written",
    ]
    clock = next((cb for cb in trainer.callbacks if isinstance(cb, RunClock)), None)
    fid = next((cb for cb in trainer.callbacks if isinstance(cb, SampleFID) and cb.end_seconds), None)
    if clock is not None or fid is not None:
        spent = []
        if clock is not None:
            spent.append(f"validation {clock.validation_s:.0f} s of {clock.elapsed():.0f} s training")
        if fid is not None:
            spent.append(f"final FID / KID {fid.end_seconds:.0f} s")
        lines.append(f"  time:       {'; '.join(spent)}")
    if grids:
        lines.append(f"  last grid:  {grids[-1]}")
    if runs:
        lines.append(
            f"  W&B run:    {runs[-1]}  (view: wandb leet {out / 'wandb'}; upload: wandb sync {runs[-1]})"
        )
    if ckpt.is_file():
        lines.append(f"  sample:     python sample.py ckpt_path={ckpt}")
        lines.append(f"  evaluate:   python evaluate.py ckpt_path={ckpt}")
    log.info("\n".join(lines))


def optimized_value(metrics: dict[str, Any], name: str) -> float | None:
    """The metric `name`, or the one metric named `name_*` (`val/fid` finds val/fid_256_ddim50, `val/kid` finds
    val/kid_256_ddim50). Missing: a sweeper
    that optimises cannot go on without it (ConfigError); a grid sweep or a single run only warns."""
    matches = (
        [name]
        if name in metrics  # val/kid finds val/kid_1k_ddim50, not its spread val/kid_std_1k_ddim50
        else [k for k in metrics if k.startswith(f"{name}_") and not k.startswith(f"{name}_std_")]
    )
    if len(matches) == 1:
        return float(metrics[matches[0]])
    message = (
        f"optimized_metric={name} was not logged by this run (logged: {', '.join(sorted(metrics)) or 'nothing'}): "
        "set optimized_metric to one of them"
    )
    if sweeper_optimises():
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
    if not wandb or not in_sweep():
        return
    hc = HydraConfig.get()
    with open_dict(cfg):
        if wandb.get("group") is None:
            wandb.group = f"{cfg.task_name}-{Path(hc.sweep.dir).name}"
        if wandb.get("name") is None:
            wandb.name = hc.job.override_dirname or f"job{hc.job.num}"


def main(cfg: DictConfig) -> Any:
    """Entry point called by the root train.py (decorated there with @hydra.main)."""
    return run_job(lambda: train(cfg), interrupted="interrupted before training started: nothing was saved")
