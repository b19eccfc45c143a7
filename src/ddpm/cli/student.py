"""Which sampler sample.py and evaluate.py use for a checkpoint of distill.py: the one it was distilled for, unless
the command line chose another (allowed, and said)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def sampler_chosen() -> bool:
    """Whether the command line set the sampler (sampler=<name> or sampler.<key>=<value>)."""
    if not HydraConfig.initialized():
        return False
    overrides = HydraConfig.get().overrides.task
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == "sampler" for o in overrides)


def sampler_for(requested: DictConfig, run_cfg: DictConfig, chosen: bool) -> DictConfig | dict[str, Any]:
    """`requested` (the command's sampler node) for an ordinary checkpoint; for a distilled student, its own sampler
    (the run config's: DDIM on the timesteps it was distilled on) unless `chosen`, and a warning when the chosen one
    differs from it."""
    distilled = run_cfg.get("distill")
    if distilled is None:
        return requested
    own = run_cfg.sampler
    steps = distilled.get("steps")
    if not chosen:
        log.info(
            "this student was distilled for %s steps: sampling with %s on its timesteps (%s network calls per image)",
            steps,
            own.name,
            steps,
        )
        return own
    keys = ("name", "steps", "spacing", "eta")
    wanted = OmegaConf.to_container(requested, resolve=True)
    if any(wanted.get(k) != own.get(k) for k in keys):
        log.warning(
            "this student was distilled for %s steps (%s): sampling with %s as asked, which it was not trained for",
            steps,
            ", ".join(f"{k}={own.get(k)}" for k in keys),
            ", ".join(f"{k}={wanted.get(k)}" for k in keys),
        )
    return requested
