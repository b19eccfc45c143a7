"""`python sample.py ckpt_path=...`: draw images from a checkpoint with the configured sampler; PNG grid + .npz."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.build import build_sampler
from ddpm.checkpoint import load_checkpoint
from ddpm.cli.errors import exit_on_config_error
from ddpm.errors import ConfigError
from ddpm.host_memory import retain_freed_memory
from ddpm.images import save_grid, to_uint8
from ddpm.progress import progress_bar

log = logging.getLogger(__name__)


def sample(cfg: DictConfig) -> dict[str, Any]:
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    retain_freed_memory()  # no page faults on each batch's activations: see ddpm.host_memory
    if cfg.n < 1 or cfg.batch_size < 1:
        raise ConfigError("n and batch_size must be at least 1")
    module, run_cfg = load_checkpoint(cfg.ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    sampler = build_sampler(module.diffusion, cfg.sampler)

    chunks = []
    for start in range(0, cfg.n, cfg.batch_size):
        generator = torch.Generator(device=device).manual_seed(cfg.seed + start)
        n = min(cfg.batch_size, cfg.n - start)
        chunks.append(
            to_uint8(
                module.sample(sampler, n, generator=generator, use_ema=cfg.use_ema, progress=progress_bar)
            )
        )
        log.info("sampled %d / %d images", start + n, cfg.n)
    images = torch.cat(chunks).cpu()

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", images=images.permute(0, 2, 3, 1).numpy())
    save_grid(images, out / "samples.png")
    log.info(
        "wrote %s and %s (%s, %d network calls per image)",
        out / "samples.png",
        out / "samples.npz",
        sampler.label,
        len(sampler.timesteps),
    )
    return {"png": str(out / "samples.png"), "npz": str(out / "samples.npz"), "sampler": sampler.label}


def main(cfg: DictConfig) -> Any:
    return exit_on_config_error(lambda: sample(cfg))
