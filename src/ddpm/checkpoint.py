"""Checkpoints written by train.py: read one, load its DiffusionModule from the run config stored inside it, check that
one fits a model before resuming, and find a run's newest one. Every problem is one sentence (ConfigError)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.build import build_module
from ddpm.errors import ConfigError
from ddpm.training import DiffusionModule


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint dict written by train.py; ConfigError on a missing or corrupt file or one without a config.

    mmap=True maps the tensors instead of reading them: their shapes are known at once, their bytes are read only
    when touched."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise ConfigError(
            f"checkpoint {p} is a folder: set ckpt_path to a .ckpt file written by train.py, e.g. "
            f"{p / 'checkpoints' / 'last.ckpt'}"
        )
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist: set ckpt_path to a .ckpt file written by train.py")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as e:
        raise ConfigError(
            f"checkpoint {p} could not be read ({type(e).__name__}): the file is corrupt or not a PyTorch "
            "checkpoint; use another one, e.g. the run's checkpoints/last.ckpt"
        ) from e
    config = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if config is None or "state_dict" not in ckpt:
        raise ConfigError(f"{p} holds no run config: it was not written by this project's train.py")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[DiffusionModule, DictConfig]:
    """(module with trained and EMA weights, the run's config); ConfigError on a missing, corrupt or mismatched file."""
    ckpt = read_checkpoint(path)
    cfg = OmegaConf.create(ckpt["hyper_parameters"]["config"])
    module = build_module(cfg)
    problem = state_dict_mismatch(module.state_dict(), ckpt["state_dict"])
    if problem:
        raise ConfigError(
            f"checkpoint {path} does not match the model described by its own config ({problem}): "
            "it was written by a different version of the code"
        )
    module.load_state_dict(ckpt["state_dict"])
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


def state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """What keeps `found` from loading strictly into a module whose state dict is `expected` (None: it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing key(s), e.g. {missing[0]}"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}"] if unexpected else []
        return "; ".join(parts)
    for k, v in expected.items():
        if tuple(found[k].shape) != tuple(v.shape):
            return f"size mismatch for {k}: {tuple(found[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
    return None


# what defines the network and the process it learned: a checkpoint resumes only into a run that agrees on all of it
# (model.channels_last is a memory layout, free to change; model.compile came from older run configs)
RESUME_MUST_MATCH = {
    "model": None,  # every setting
    "schedule": None,
    "diffusion": ("objective", "var_type", "self_condition"),
}
RESUME_MAY_DIFFER = {"model.channels_last", "model.compile"}


def changed_settings(stored: dict, composed: dict) -> list[str]:
    """`key: <checkpoint's value> in the checkpoint, <value> now` for each setting of RESUME_MUST_MATCH that differs
    (a key only one of them has counts as a difference; where the checkpoint predates the key, its value is what the
    older code ran with: the default of that argument of the class the node builds, unknown for a node without one)."""
    changes = []
    for group, keys in RESUME_MUST_MATCH.items():
        old, new = stored.get(group) or {}, composed.get(group) or {}
        names = keys or sorted(set(old) | set(new))
        for k in names:
            key = f"{group}.{k}"
            if key in RESUME_MAY_DIFFER:
                continue
            if k not in old:
                then = default_argument(old.get("_target_"), k)
                if then is not inspect.Parameter.empty and new.get(k, then) != then:
                    changes.append(
                        f"{key} {then!r} (unset, the default then) in the checkpoint, {new[k]!r} now"
                    )
            elif old.get(k) != new.get(k):
                changes.append(f"{key} {old.get(k)!r} in the checkpoint, {new.get(k, 'unset')!r} now")
    return changes


def default_argument(target: str | None, name: str) -> Any:
    """The default of argument `name` of the class named `target` (inspect.Parameter.empty when there is none)."""
    if not target:
        return inspect.Parameter.empty
    try:
        parameter = inspect.signature(hydra.utils.get_class(target)).parameters.get(name)
    except Exception:  # a class that no longer exists: nothing known about its defaults
        return inspect.Parameter.empty
    return inspect.Parameter.empty if parameter is None else parameter.default


def check_resume(module: DiffusionModule, path: str | Path, cfg: DictConfig) -> int:
    """Fail now, with one sentence, if the checkpoint to resume from cannot be read or holds another model than the
    one `cfg` describes (the network's settings, the schedule, the objective, the variance, self-conditioning, the
    class count); returns the checkpoint's step.

    The weights are compared by names and shapes only, on a memory-mapped file: they are read once, by the Trainer.
    """
    ckpt = read_checkpoint(path, mmap=True)
    changes = changed_settings(ckpt["hyper_parameters"]["config"], OmegaConf.to_container(cfg, resolve=True))
    if changes:
        raise ConfigError(
            f"checkpoint {path} holds another model than this run's config: {'; '.join(changes)}: resume with the "
            "settings of the run that wrote it, or start a new run in another folder (without ckpt_path)"
        )
    problem = state_dict_mismatch(module.state_dict(), ckpt["state_dict"])
    if problem:
        raise ConfigError(
            f"checkpoint {path} does not match the model of this run's config ({problem}): "
            "resume with the model settings of the run that wrote it"
        )
    return int(ckpt.get("global_step", 0))
