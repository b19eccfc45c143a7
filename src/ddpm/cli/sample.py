"""`python sample.py ckpt_path=...`: draw images from a checkpoint with the configured sampler; PNG grid + .npz."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from ddpm.cli.checkpoint import load_checkpoint
from ddpm.cli.errors import building, exit_on_config_error
from ddpm.diffusion import make_sampler
from ddpm.errors import ConfigError
from ddpm.host_memory import retain_freed_memory
from ddpm.training import to_unit_interval

log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 exactly as a saved PNG quantises them: floor(255 x01 + 0.5), clamped."""
    return (to_unit_interval(images) * 255 + 0.5).clamp(0, 255).to(torch.uint8)


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
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.sampler).items() if k != "name" and v is not None}
    sampler = building("sampler", lambda: make_sampler(module.diffusion, cfg.sampler.name, **kwargs))

    chunks = []
    for start in range(0, cfg.n, cfg.batch_size):
        generator = torch.Generator(device=device).manual_seed(cfg.seed + start)
        n = min(cfg.batch_size, cfg.n - start)
        chunks.append(
            to_uint8(module.sample(sampler, n, generator=generator, use_ema=cfg.use_ema, progress=True))
        )
        log.info("sampled %d / %d images", start + n, cfg.n)
    images = torch.cat(chunks).cpu()

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "samples.npz", images=images.permute(0, 2, 3, 1).numpy())
    grid = make_grid(
        images.float() / 255, nrow=int(math.ceil(math.sqrt(len(images)))), padding=2, pad_value=1.0
    )
    save_image(grid, out / "samples.png")
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
