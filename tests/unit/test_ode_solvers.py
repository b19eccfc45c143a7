"""The probability-flow ODE solvers against an exact oracle: for Gaussian data x0 ~ N(mu, s^2) the optimal network
is known in closed form and the ODE maps x_T to x_t affinely (it keeps the standardised coordinate
z = (x_t - sqrt(ab_t) mu) / sqrt(ab_t s^2 + 1 - ab_t)), so every solver's error can be measured exactly."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from tests.helpers.oracles import gaussian_eps, gaussian_x0_mean

MU, S = 0.3, 0.5


def exact_ode(x, ab_from, ab_to):
    """The probability-flow ODE's solution for Gaussian data, from alphabar ab_from to ab_to."""
    z = (x - ab_from**0.5 * MU) / (ab_from * S**2 + 1 - ab_from) ** 0.5
    return ab_to**0.5 * MU + (ab_to * S**2 + 1 - ab_to) ** 0.5 * z


def solver_error(name: str, steps: int, schedule: str = "linear", objective: str = "eps", **kwargs) -> float:
    """Max error of the solver's output against the exact ODE solution to the last timestep tau_1 followed by the
    same final step every solver takes there (alphabar = 1: the data prediction E[x0 | x_tau1])."""
    d = GaussianDiffusion(make_beta_schedule(schedule, 1000), objective=objective, clip_denoised=False)
    ab = torch.cumprod(1 - d.betas, 0)
    eps_model = gaussian_eps(d, MU, S)
    if objective == "eps":
        model = eps_model
    else:  # the same optimal network, expressed as the objective's output

        def model(x, t):
            a = ab[t].view(-1, 1).to(x.dtype)
            eps = eps_model(x, t)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            return x0 if objective == "x0" else a.sqrt() * eps - (1 - a).sqrt() * x0

    sampler = make_sampler(d, name, steps=steps, **kwargs)
    x_T = torch.linspace(-3, 3, 61, dtype=torch.float64).view(-1, 1)
    out = sampler.sample(model, x_T.shape, noise=x_T)
    first, last = sampler.timesteps[-1], sampler.timesteps[0]
    reference = gaussian_x0_mean(ab[last], MU, S, exact_ode(x_T, ab[first], ab[last]))
    return (out.double() - reference).abs().max().item()


def slope(name: str, steps: tuple[int, int], **kwargs) -> float:
    """log2 of the error ratio when the steps double: the solver's order of convergence."""
    a, b = steps
    assert b == 2 * a
    return math.log2(solver_error(name, a, **kwargs) / solver_error(name, b, **kwargs))


@pytest.mark.parametrize(
    "name,kwargs,order",
    [("ddim", {"eta": 0.0}, 1), ("dpm_solver_pp", {}, 2), ("dpm_solver_pp", {"order": 1}, 1)],
)
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_order_of_convergence(name, kwargs, order, schedule):
    """Steps uniform in log-SNR (equal solver steps); S steps = S network calls."""
    measured = [slope(name, (n, 2 * n), schedule=schedule, spacing="logsnr", **kwargs) for n in (20, 40)]
    assert all(abs(m - order) <= 0.3 for m in measured), measured


def test_unipc_with_its_corrector_converges_faster_than_second_order():
    measured = [slope("unipc", (n, 2 * n), spacing="logsnr") for n in (20, 40)]
    assert all(m >= 2.3 for m in measured), measured  # UniC raises UniP-2 to order 3


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_ten_steps_of_a_high_order_solver_beat_ten_ddim_steps_by_far(schedule, objective):
    """Each solver at its own default spacing (DDIM: uniform; the ODE solvers: logsnr), and DDIM at logsnr too."""
    ddim = min(
        solver_error("ddim", 10, schedule, objective, eta=0.0),
        solver_error("ddim", 10, schedule, objective, eta=0.0, spacing="logsnr"),
    )
    for name in ("dpm_solver_pp", "unipc"):
        assert solver_error(name, 10, schedule, objective) < ddim / 5, name


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "logsnr"])
def test_every_spacing_gives_s_distinct_steps_and_s_calls(spacing):
    d = GaussianDiffusion(make_beta_schedule("cosine", 1000))
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    sampler = make_sampler(d, "dpm_solver_pp", steps=10, spacing=spacing)
    sampler.sample(model, (2, 1))
    assert len(set(sampler.timesteps)) == 10 and calls == sampler.timesteps[::-1]


def test_logsnr_spacing_is_uniform_in_log_snr():
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    ts = make_sampler(d, "unipc", steps=8, spacing="logsnr").timesteps
    ab = torch.cumprod(1 - d.betas, 0)[ts]
    lam = 0.5 * torch.log(ab / (1 - ab))
    gaps = lam[:-1] - lam[1:]
    assert gaps.max() / gaps.min() < 1.3  # nearest timesteps: equal gaps up to the grid


def test_an_order_the_steps_cannot_support_is_refused():
    d = GaussianDiffusion(make_beta_schedule("linear", 100))
    with pytest.raises(ValueError, match="order 2 needs at least 2 steps, got steps=1"):
        make_sampler(d, "dpm_solver_pp", steps=1)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        make_sampler(d, "unipc", order=3)
