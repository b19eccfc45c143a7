"""Load a DiffusionModule back from a checkpoint written by train.py, using the run config stored inside it."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.training import DiffusionModule


def load_checkpoint(path: str | Path) -> tuple[DiffusionModule, DictConfig]:
    """(module with trained and EMA weights, the run's config); ConfigError on a missing, corrupt or mismatched file."""
    from ddpm.cli.train import build_module  # the same builder as training: one definition of the model

    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist: set ckpt_path to a .ckpt file written by train.py")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {p} could not be read ({type(e).__name__}): the file is corrupt or not a PyTorch "
            "checkpoint; use another one, e.g. the run's checkpoints/last.ckpt"
        ) from e
    config = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if config is None or "state_dict" not in ckpt:
        raise ConfigError(f"{p} holds no run config: it was not written by this project's train.py")
    cfg = OmegaConf.create(config)
    module = build_module(cfg)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(
            f"checkpoint {p} does not match the model described by its own config ({first[0] if first else e}): "
            "it was written by a different version of the code"
        ) from e
    module.eval()
    return module, cfg
