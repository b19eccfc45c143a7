"""Diffusion math in plain PyTorch (no Lightning, no Hydra): schedules, the Gaussian process, samplers."""

from ddpm.diffusion.process import OBJECTIVES, VAR_TYPES, GaussianDiffusion
from ddpm.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler, make_sampler, space_timesteps
from ddpm.diffusion.schedules import SCHEDULES, make_beta_schedule

__all__ = [
    "OBJECTIVES",
    "SCHEDULES",
    "VAR_TYPES",
    "DDIMSampler",
    "DDPMSampler",
    "GaussianDiffusion",
    "Sampler",
    "make_beta_schedule",
    "make_sampler",
    "space_timesteps",
]
