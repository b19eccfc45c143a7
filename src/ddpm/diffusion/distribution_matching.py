"""Distribution matching (Yin et al. 2024, DMD; DMD2): a few-step generator pushed toward the distribution of a
diffusion model rather than along its deterministic chain.

A student that copies its teacher's DDIM chain (progressive distillation) can be no better than that chain, and a
teacher's deterministic sampler is worse than its stochastic ones. Distribution matching instead descends, for the
generator's samples x with distribution p_fake, the KL divergence to the teacher's p_real after both are diffused to
a random t:

    grad_x KL(p_fake,t || p_real,t) = E_t,eps [ s_fake(x_t, t) - s_real(x_t, t) ],   x_t = alpha_t x + sigma_t eps,

with s_real the teacher's score and s_fake that of a second diffusion model trained online on the generator's own
samples (the "fake" score; it starts as a copy of the teacher). Written with data predictions,
s(x_t) = -(x_t - alpha_t xhat(x_t)) / sigma_t^2, so s_fake - s_real = (alpha_t / sigma_t^2) (xhat_fake - xhat_real):
the generator moves its sample toward what the teacher would denoise its noised copy to, and away from what a model of
its own outputs would. DMD replaces alpha_t / sigma_t^2 with a per-image normalisation,

    g = (xhat_fake - xhat_real) / mean |x - xhat_real|,                                            (DMD, eq. 8)

and trains with the loss 0.5 || x - sg(x - g) ||^2, whose gradient in x is g.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the t of the noised copy: DMD's [0.02 T, 0.98 T], away from the ends where both scores see only data or only noise
T_RANGE = (0.02, 0.98)


def matching_gradient(x: Tensor, real_x0: Tensor, fake_x0: Tensor) -> Tensor:
    """g = (xhat_fake - xhat_real) / mean_image |x - xhat_real| (DMD's normalised KL gradient, per image)."""
    dims = tuple(range(1, x.ndim))
    scale = (x - real_x0).abs().mean(dim=dims, keepdim=True).clamp_min(1e-5)
    return (fake_x0 - real_x0) / scale


def matching_loss(x: Tensor, gradient: Tensor) -> Tensor:
    """0.5 mean_image || x - sg(x - g) ||^2 per image: its gradient in x is g / (pixels per image)."""
    target = (x - gradient).detach()
    return 0.5 * ((x - target) ** 2).flatten(1).mean(1)


def noised_copy_timesteps(
    n: int, num_timesteps: int, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """n timesteps uniform in [0.02 T, 0.98 T) (`T_RANGE`)."""
    low, high = (round(f * num_timesteps) for f in T_RANGE)
    return torch.randint(low, high, (n,), device=device, generator=generator)


__all__ = ["T_RANGE", "matching_gradient", "matching_loss", "noised_copy_timesteps"]
