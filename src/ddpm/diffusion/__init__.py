"""Diffusion math in plain PyTorch (no Lightning, no Hydra): schedules, the Gaussian process, samplers."""

from ddpm.diffusion.process import (
    LOSS_WEIGHTS,
    OBJECTIVES,
    VAR_TYPES,
    GaussianDiffusion,
    Model,
    Progress,
    min_snr_weights,
    naive_step,
    q_step,
)
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
    "VAR_TYPES",
    "DDIMSampler",
    "DDPMSampler",
    "GaussianDiffusion",
    "Model",
    "Progress",
    "RespacedModel",
    "Sampler",
    "make_beta_schedule",
    "make_sampler",
    "min_snr_weights",
    "naive_step",
    "p_sample_loop",
    "q_step",
    "space_timesteps",
]
