"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student that takes one DDIM step where its teacher
takes two, so that each round halves the network calls of sampling.

With alpha_t = sqrt(alphabar_t), sigma_t = sqrt(1 - alphabar_t) and the teacher's data prediction xhat_eta, one
deterministic DDIM step from t to s is

    z_s = alpha_s xhat + (sigma_s / sigma_t) (z_t - alpha_t xhat),                                 (DDIM, eta = 0)

and the student, to land where two teacher steps t -> t' -> t'' land in one step t -> t'', must predict

    xtilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),     (Algorithm 2)

regressed with the truncated-SNR weight max(alpha_t^2 / sigma_t^2, 1) on the x-space error (the paper's weighting for
x and v students; an eps student cannot be distilled to one step: its x_0 = (z - sigma eps) / alpha divides by
alpha_T ~ 0). With T' = 0 for "the data" (alphabar = 1, sigma = 0), the last step's target is the teacher's z_0.

The timesteps of a student of N steps are `trailing_timesteps(T, N)` (the sampler spacing `trailing`): tau_i = round(i T / N) - 1, i = 1..N, so the
grid of N steps is every other point of the grid of 2N steps (tau^N_i = tau^2N_2i): the teacher's two steps from
tau^N_i pass through tau^2N_{2i-1} and end on tau^N_{i-1}, a point the student's next step starts from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ddpm.diffusion.samplers import trailing_timesteps

# the teacher's data prediction at (z_t, t): x_0 as its DDIM sampler uses it (clipped as the diffusion clips)
DataPrediction = Callable[[Tensor, Tensor], Tensor]


def halving_rounds(teacher_steps: int, student_steps: int) -> list[int]:
    """The student step counts of each round from `teacher_steps` down to `student_steps`, halving each time:
    halving_rounds(32, 4) = [16, 8, 4]. ValueError when student_steps is not teacher_steps / 2^k, k >= 1."""
    if student_steps < 1 or teacher_steps <= student_steps:
        raise ValueError(
            f"the student must take fewer steps than its teacher: got {teacher_steps} teacher steps and "
            f"{student_steps} student steps"
        )
    rounds, n = [], teacher_steps
    while n > student_steps and n % 2 == 0:
        n //= 2
        rounds.append(n)
    if n != student_steps:
        raise ValueError(
            f"{student_steps} student steps are not reachable from {teacher_steps} teacher steps by halving: "
            f"choose a teacher step count of {student_steps} x 2^k (e.g. {student_steps * 2**5})"
        )
    return rounds


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) = (sqrt(alphabar_t), sqrt(1 - alphabar_t)) per image, in float64; t = -1 is the data
    (alpha 1, sigma 0)."""
    ac = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod.double()]).to(t.device)[t + 1]
    return ac.sqrt(), (1 - ac).clamp(min=0).sqrt()


def ddim_step(
    z_t: Tensor, x0: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_s: Tensor, sigma_s: Tensor
) -> Tensor:
    """z_s = alpha_s x0 + (sigma_s / sigma_t) (z_t - alpha_t x0): the deterministic DDIM step (per-image scalars)."""
    a_t, s_t, a_s, s_s = (_per_image(v, z_t) for v in (alpha_t, sigma_t, alpha_s, sigma_s))
    return a_s * x0 + (s_s / s_t) * (z_t - a_t * x0)


def two_step_target(
    z_t: Tensor, z_end: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_end: Tensor, sigma_end: Tensor
) -> Tensor:
    """xtilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t): the x_0 whose one
    DDIM step from z_t lands on z_t''."""
    a_t, s_t, a_e, s_e = (_per_image(v, z_t) for v in (alpha_t, sigma_t, alpha_end, sigma_end))
    ratio = s_e / s_t
    return (z_end - ratio * z_t) / (a_e - ratio * a_t)


def progressive_target(
    teacher: DataPrediction, z_t: Tensor, index: Tensor, teacher_grid: list[int], alphas_cumprod: Tensor
) -> Tensor:
    """The student's x_0 target at z_t = z at student step `index` (1..N per image) of a student with N steps, whose
    teacher takes 2N steps on `teacher_grid` (trailing_timesteps(T, 2N)): two teacher DDIM steps tau_2i -> tau_2i-1
    -> tau_2i-2 (tau_0: the data), then the x_0 that one step from z_t reaches the same point with."""
    grid = torch.tensor(
        [-1, *teacher_grid], dtype=torch.long, device=z_t.device
    )  # grid[j] = tau_j, tau_0 = data
    t, t_mid, t_end = grid[2 * index], grid[2 * index - 1], grid[2 * index - 2]
    a_t, s_t = alpha_sigma(alphas_cumprod, t)
    a_mid, s_mid = alpha_sigma(alphas_cumprod, t_mid)
    a_end, s_end = alpha_sigma(alphas_cumprod, t_end)
    z = z_t.double()
    z_mid = ddim_step(z, teacher(z_t, t).double(), a_t, s_t, a_mid, s_mid)
    z_end = ddim_step(z_mid, teacher(z_mid.to(z_t.dtype), t_mid).double(), a_mid, s_mid, a_end, s_end)
    return two_step_target(z, z_end, a_t, s_t, a_end, s_end).to(z_t.dtype)


def truncated_snr_weights(alpha: Tensor, sigma: Tensor) -> Tensor:
    """max(alpha^2 / sigma^2, 1): the paper's weight of the x-space error (SNR, floored at 1 for high noise)."""
    return (alpha**2 / sigma**2).clamp(min=1.0)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


__all__ = [
    "DataPrediction",
    "alpha_sigma",
    "ddim_step",
    "halving_rounds",
    "progressive_target",
    "trailing_timesteps",
    "truncated_snr_weights",
    "two_step_target",
]
