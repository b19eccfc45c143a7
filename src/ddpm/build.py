"""Config -> parts: the diffusion, its training recipe, the network, the LightningModule and the sampler described by a
run config.

Used by the entry points (cli/), the benchmarks, the notebooks and checkpoint loading, so that every one of them
builds exactly the model that training built. Errors in a config value become one-sentence ConfigErrors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm import config as _config  # noqa: F401  (registers the resolvers the configs use)
from ddpm.diffusion import GaussianDiffusion, Recipe, Sampler, make_beta_schedule, make_sampler
from ddpm.errors import ConfigError, building
from ddpm.training import DiffusionModule

# the settings of the training recipe; run configs written before `recipe` was its own group carry them in `diffusion`
RECIPE_KEYS = (
    "t_sampling",
    "log_sigma_mean",
    "log_sigma_std",
    "loss_weight",
    "snr_gamma",
    "stf_reference",
    "vlb_weight",
)


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion:
    """The GaussianDiffusion of cfg.schedule (betas) and cfg.diffusion (objective, variance, clipping,
    self-conditioning)."""
    betas = building("schedule", lambda: make_beta_schedule(**cfg.schedule))
    process = {k: v for k, v in cfg.diffusion.items() if k not in RECIPE_KEYS}
    return building("diffusion", lambda: GaussianDiffusion(betas, **process))


def recipe_settings(cfg: DictConfig) -> dict[str, Any]:
    """cfg.recipe as a dict; for a run config of older code, the recipe keys of its diffusion node (the rest take
    `Recipe`'s defaults, which are what that code did without them)."""
    if cfg.get("recipe") is not None:
        return OmegaConf.to_container(cfg.recipe, resolve=True)
    return {k: v for k, v in OmegaConf.to_container(cfg.diffusion, resolve=True).items() if k in RECIPE_KEYS}


def build_recipe(cfg: DictConfig, diffusion: GaussianDiffusion) -> Recipe:
    """The training recipe of cfg.recipe for `diffusion`."""
    settings = recipe_settings(cfg)
    return building("recipe", lambda: Recipe(diffusion, **settings))


def network_settings(cfg: DictConfig) -> dict[str, Any]:
    """What `build_network` instantiates: cfg.model, with twice the image channels out when the diffusion learns its
    reverse variance (diffusion.var_type=learned_range: the prediction, then the variance values) and an x_0
    estimate as input when it is self-conditioned (diffusion.self_condition).

    Run configs written before `compile` became a top-level setting carry it as model.compile; it is dropped here so
    their checkpoints still load."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("compile", None)
    if model_cfg.get("num_classes") == "auto":
        raise ConfigError(
            "model.num_classes=auto is resolved from the data by train.py: give the number of classes here"
        )
    if cfg.diffusion.get("self_condition"):
        model_cfg["self_condition"] = True
    if cfg.diffusion.get("var_type") == "learned_range":
        in_channels = model_cfg.get("in_channels", 3)
        model_cfg["out_channels"] = 2 * (model_cfg.get("out_channels") or in_channels)
    return model_cfg


def build_network(cfg: DictConfig) -> torch.nn.Module:
    """The network of cfg.model: `hydra.utils.instantiate(network_settings(cfg))`."""
    settings = network_settings(cfg)
    return building("model", lambda: hydra.utils.instantiate(settings))


def compile_requested(cfg: DictConfig) -> bool:
    """torch.compile the training network: `compile` (or model.compile in run configs of older checkpoints)."""
    return bool(cfg.get("compile") or cfg.model.get("compile", False))


def build_module(
    cfg: DictConfig, module_class: type[DiffusionModule] = DiffusionModule, **extra: Any
) -> DiffusionModule:
    """The DiffusionModule (network, EMA, diffusion, optimizer settings) described by cfg; a subclass of it (distill.py's
    ProgressiveDistillation) with `module_class`, its own arguments in `extra`."""
    diffusion = build_diffusion(cfg)
    recipe = build_recipe(cfg, diffusion)
    net = build_network(cfg)
    return building(
        "optim/ema",
        lambda: module_class(
            net,
            diffusion,
            recipe,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            adam_betas=tuple(cfg.optim.adam_betas),
            eps=cfg.optim.eps,
            warmup_steps=cfg.optim.warmup_steps,
            lr_decay=cfg.optim.get("decay", "constant"),
            final_lr_ratio=cfg.optim.get("final_lr_ratio", 0.0),
            ema_decay=cfg.ema.decay,
            ema_warmup=cfg.ema.warmup,
            noise_seed=cfg.get("seed") or 0,
            compile=compile_requested(cfg),
            p_uncond=(cfg.get("condition") or {}).get("p_uncond", 0.1),
            guidance=(cfg.get("condition") or {}).get("guidance", 0.0),
            config=OmegaConf.to_container(cfg, resolve=True),
            **extra,
        ),
    )


def build_held_out_data(cfg: DictConfig, data_root: str | None = None):
    """The data module of a run config (at `data_root` if given: the data moved), checked and set up for its held-out
    split (what evaluate.py scores against and sample.py's edits start from)."""
    data_cfg = cfg.data if not data_root else OmegaConf.merge(cfg.data, {"root": data_root})
    datamodule = building("data", lambda: hydra.utils.instantiate(data_cfg))
    datamodule.check()
    datamodule.setup("validate")
    return datamodule


def sampler_spec(spec: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A sampler node (the shape of conf/sampler/*.yaml: `name` and the sampler's arguments) as a plain dict."""
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    return dict(spec)


def build_sampler(
    diffusion: GaussianDiffusion, spec: Mapping[str, Any] | DictConfig, what: str = "sampler"
) -> Sampler:
    """The sampler of a sampler node: `make_sampler(diffusion, **spec)`; `what` names the node in errors."""
    kwargs = sampler_spec(spec)
    return building(what, lambda: make_sampler(diffusion, **kwargs))
