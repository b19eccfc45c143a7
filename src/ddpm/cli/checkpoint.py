"""Load a DiffusionModule back from a checkpoint written by train.py, using the run config stored inside it."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.errors import ConfigError
from ddpm.training import DiffusionModule


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict written by train.py; ConfigError on a missing or corrupt file or one without a config."""
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
    return ckpt


def load_weights(module: DiffusionModule, ckpt: dict, path: str | Path, model: str, remedy: str) -> None:
    """Load the checkpoint's weights into module; ConfigError naming `model` and ending with `remedy` if they do not fit."""
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(
            f"checkpoint {path} does not match the model {model} ({first[0] if first else e}): {remedy}"
        ) from e


def load_checkpoint(path: str | Path) -> tuple[DiffusionModule, DictConfig]:
    """(module with trained and EMA weights, the run's config); ConfigError on a missing, corrupt or mismatched file."""
    from ddpm.cli.train import build_module  # the same builder as training: one definition of the model

    ckpt = read_checkpoint(path)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    module = build_module(cfg)
    load_weights(
        module,
        ckpt,
        path,
        "described by its own config",
        "it was written by a different version of the code",
    )
    module.eval()
    return module, cfg


def find_last_checkpoint(runs_dir: str | Path) -> Path:
    """The newest `<run>/checkpoints/last.ckpt` under runs_dir (what `ckpt_path=last` resumes)."""
    found = sorted(Path(runs_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"ckpt_path=last: no run under {runs_dir} has checkpoints/last.ckpt; give the checkpoint's path instead"
        )
    return found[-1]


def check_resume(module: DiffusionModule, path: str | Path) -> None:
    """Fail now, with one sentence, if the checkpoint to resume from cannot be read or does not fit the model."""
    load_weights(
        module,
        read_checkpoint(path),
        path,
        "of this run's config",
        "resume with the model settings of the run that wrote it",
    )
