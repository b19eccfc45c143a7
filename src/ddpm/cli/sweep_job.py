"""What train.py does differently as a job of a sweep (`-m`, hparams_search=...): name the job's W&B run within the
sweep's group, check before training that the metric an optimising sweeper needs will be logged, and return it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ddpm.cli.errors import in_sweep
from ddpm.errors import ConfigError

log = logging.getLogger(__name__)


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


def optimized_value(metrics: dict[str, Any], name: str) -> float | None:
    """The metric `name`, or the one metric named `name_*` (`val/fid` finds val/fid_256_ddim50, `val/kid` finds
    val/kid_256_ddim50). Missing: a sweeper that optimises cannot go on without it (ConfigError); a grid sweep or a
    single run only warns."""
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
