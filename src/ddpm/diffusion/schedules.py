"""Variance schedules beta_1..beta_T of the forward process q(x_t | x_{t-1}) = N(sqrt(1-beta_t) x_{t-1}, beta_t I).

Every schedule returns a float64 tensor of shape [T]; index 0 is the paper's t = 1.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")


def _scaled_endpoints(num_timesteps: int, beta_start: float, beta_end: float) -> tuple[float, float]:
    """Ho et al.'s endpoints are for T = 1000; Improved DDPM scales them by 1000 / T for other T."""
    scale = 1000.0 / num_timesteps
    return scale * beta_start, scale * beta_end


def linear_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t = linspace(beta_start, beta_end, T) (Ho et al. 2020, 1e-4..0.02 at T = 1000)."""
    start, end = _scaled_endpoints(num_timesteps, beta_start, beta_end)
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def quadratic_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (the 'quad' schedule of Ho et al.'s code)."""
    start, end = _scaled_endpoints(num_timesteps, beta_start, beta_end)
    return torch.linspace(start**0.5, end**0.5, num_timesteps, dtype=torch.float64) ** 2


def sigmoid_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t = beta_start + (beta_end - beta_start) * sigmoid(linspace(-6, 6, T))."""
    start, end = _scaled_endpoints(num_timesteps, beta_start, beta_end)
    x = torch.linspace(-6.0, 6.0, num_timesteps, dtype=torch.float64)
    return start + (end - start) * torch.sigmoid(x)


def cosine_alphas_cumprod(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """f(t) = cos(((t/T) + s) / (1 + s) * pi/2)^2, with t already divided by T (Nichol & Dhariwal 2021, eq. 17)."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = min(1 - alphabar_t / alphabar_{t-1}, max_beta) with alphabar_t = f(t) / f(0) (Nichol & Dhariwal)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alphabar = cosine_alphas_cumprod(steps, s)
    betas = 1.0 - alphabar[1:] / alphabar[:-1]
    return betas.clamp(max=max_beta)


_BUILDERS = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "quadratic": quadratic_schedule,
    "sigmoid": sigmoid_schedule,
}


def make_beta_schedule(name: str, num_timesteps: int, **kwargs: float) -> torch.Tensor:
    """The betas of schedule `name` (one of SCHEDULES) over `num_timesteps` steps, float64 [T]."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown beta schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    if int(num_timesteps) != num_timesteps or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    betas = _BUILDERS[name](int(num_timesteps), **kwargs)
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"schedule {name!r} with T={num_timesteps} gives betas outside (0, 1) (the endpoints scale by 1000 / T): "
            "use more timesteps or a smaller beta_end"
        )
    return betas
