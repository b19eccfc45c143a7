"""Networks whose output is known exactly, to test the math against closed forms."""

from __future__ import annotations

import torch

from ddpm.diffusion import GaussianDiffusion


def point_mass_eps(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The ideal eps-model for data that is exactly x0: eps = (x_t - sqrt(alphabar_t) x0) / sqrt(1 - alphabar_t)."""

    def model(x_t, t):
        ab = diffusion.alphas_cumprod.float()[t].view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    return model


class CountingModel:
    """A deterministic stand-in eps-model that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return 0.1 * x + 1e-4 * t.float().view(-1, *([1] * (x.ndim - 1)))


def gaussian_eps(diffusion: GaussianDiffusion, mu: float, s: float):
    """The optimal eps-model for data x0 ~ N(mu, s^2 I), in closed form:
    eps*(x_t, t) = sqrt(1 - alphabar_t) (x_t - sqrt(alphabar_t) mu) / (alphabar_t s^2 + 1 - alphabar_t)."""

    def model(x_t, t):
        ab = diffusion.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)

    return model


def gaussian_reverse_mean(ab_prev, ab_t, mu: float, s: float, x_t):
    """E[x_prev | x_t] for data x0 ~ N(mu, s^2) by Bayes' rule on the joint Gaussian of (x_prev, x_t), where
    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) e1 and x_t = sqrt(a) x_prev + sqrt(1 - a) e2, a = ab_t / ab_prev."""
    a = ab_t / ab_prev
    var_prev = ab_prev * s**2 + 1 - ab_prev
    mean_prev = ab_prev**0.5 * mu
    var_t = a * var_prev + (1 - a)
    return mean_prev + a**0.5 * var_prev / var_t * (x_t - a**0.5 * mean_prev)


def gaussian_x0_mean(ab_t, mu: float, s: float, x_t):
    """E[x0 | x_t] for x0 ~ N(mu, s^2) and x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) e, by Bayes' rule."""
    return mu + ab_t**0.5 * s**2 / (ab_t * s**2 + 1 - ab_t) * (x_t - ab_t**0.5 * mu)
