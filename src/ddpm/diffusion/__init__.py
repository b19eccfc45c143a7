"""Diffusion math in plain PyTorch (no Lightning, no Hydra): schedules, the Gaussian process, the training recipe,
samplers."""

from ddpm.diffusion.process import (
    OBJECTIVES,
    VAR_TYPES,
    GaussianDiffusion,
    Model,
    Progress,
    naive_step,
    q_step,
)
from ddpm.diffusion.recipe import LOSS_WEIGHTS, T_SAMPLINGS, Recipe, StableTargetField
from ddpm.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    RespacedModel,
    Sampler,
    make_sampler,
    p_sample_loop,
    space_timesteps,
)
from ddpm.diffusion.schedules import SCHEDULES, make_beta_schedule

__all__ = [
    "LOSS_WEIGHTS",
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "T_SAMPLINGS",
    "VAR_TYPES",
    "DDIMSampler",
    "DDPMSampler",
    "GaussianDiffusion",
    "Model",
    "Progress",
    "Recipe",
    "RespacedModel",
    "Sampler",
    "StableTargetField",
    "make_beta_schedule",
    "make_sampler",
    "naive_step",
    "p_sample_loop",
    "q_step",
    "space_timesteps",
]
