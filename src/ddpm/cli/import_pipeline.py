"""`python import.py source=<folder> out=<file.ckpt>`: a diffusers DDPM pipeline folder as a checkpoint of this
project, which sample.py and evaluate.py take."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddpm.cli.errors import check_writable, run_job
from ddpm.errors import ConfigError
from ddpm.interop.pipeline import import_pipeline, save_checkpoint

log = logging.getLogger(__name__)


def import_checkpoint(cfg: DictConfig) -> Path:
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    source, out = Path(cfg.source).expanduser().resolve(), Path(cfg.out).expanduser().resolve()
    check_writable(out.parent, "out")
    module, run_cfg = import_pipeline(source, cfg.dataset)
    save_checkpoint(module, run_cfg, out, source)
    log.info(
        "wrote %s: %.2fM parameters, %s schedule, objective %s, variance %s; data %s. Next: python evaluate.py "
        "ckpt_path=%s",
        out,
        module.num_parameters / 1e6,
        run_cfg.schedule.name,
        run_cfg.diffusion.objective,
        run_cfg.diffusion.var_type,
        run_cfg.data.source,
        out,
    )
    return out


def main(cfg: DictConfig) -> Any:
    return run_job(lambda: import_checkpoint(cfg), interrupted="interrupted: nothing was written")
