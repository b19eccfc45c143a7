"""`python export.py ckpt_path=... out=<folder>`: a checkpoint as a diffusers DDPMPipeline folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddpm.checkpoint import load_checkpoint
from ddpm.cli.errors import check_writable, run_job
from ddpm.errors import ConfigError
from ddpm.interop.pipeline import export_pipeline

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    out = Path(cfg.out).expanduser().resolve()
    check_writable(out.parent, "out")
    module, run_cfg = load_checkpoint(cfg.ckpt_path)
    export_pipeline(module, run_cfg, out, use_ema=cfg.use_ema)
    log.info(
        "wrote %s (%s weights): load it with diffusers.DDPMPipeline.from_pretrained(%r)",
        out,
        "EMA" if cfg.use_ema else "raw",
        str(out),
    )
    return out


def main(cfg: DictConfig) -> Any:
    return run_job(lambda: export(cfg), interrupted="interrupted: nothing was written")
