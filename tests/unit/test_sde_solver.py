"""SDE-DPM-Solver++(2M) against independent references: at order 1 it is ancestral DDPM with the posterior variance
(the respaced chain's betatilde, built by DDPMSampler from Bayes' rule), and for Gaussian data x0 ~ N(mu, s^2), where
the optimal network is known in closed form, its samples have the data's mean and variance."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from tests.helpers.oracles import CountingModel, gaussian_eps

MU, S = 0.3, 0.5


def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule("linear", 1000), objective="eps", clip_denoised=False)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_first_order_is_ancestral_ddpm_with_the_posterior_variance(spacing):
    d = diffusion()
    model = gaussian_eps(d, MU, S)
    x_T = torch.randn(64, 1, dtype=torch.float64)
    sde = make_sampler(d, "sde_dpm_solver_pp", steps=10, order=1, spacing=spacing)
    ddpm = make_sampler(d, "ddpm", steps=10, spacing=spacing, var_type="fixed_small")
    a = sde.sample(model, x_T.shape, noise=x_T.clone(), generator=torch.Generator().manual_seed(0))
    b = ddpm.sample(model, x_T.shape, noise=x_T.clone(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def sample_std_error(order: int, steps: int, n: int = 200_000) -> tuple[float, float]:
    d = diffusion()
    x_T = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler(d, "sde_dpm_solver_pp", steps=steps, order=order)
    out = sampler.sample(
        gaussian_eps(d, MU, S), x_T.shape, noise=x_T, generator=torch.Generator().manual_seed(2)
    )
    return abs(out.mean().item() - MU), abs(out.std().item() - S)


def test_second_order_samples_gaussian_data_with_its_mean_and_variance():
    # Monte Carlo standard errors at n = 200,000: 0.0011 for the mean, 0.0008 for the standard deviation
    mean_err, std_err = sample_std_error(order=2, steps=50)
    assert mean_err < 0.005 and std_err < 0.006
    # first order (DDPM with the posterior variance) plugs in E[x0 | x_t] and loses variance on few steps
    _, first_order_err = sample_std_error(order=1, steps=50)
    assert first_order_err > 5 * std_err


def test_it_calls_the_network_once_per_step_and_draws_its_noise_from_the_generator():
    d = diffusion()
    model = CountingModel()
    sampler = make_sampler(d, "sde_dpm_solver_pp", steps=12)
    a = sampler.sample(model, (4, 1, 3, 3), generator=torch.Generator().manual_seed(5))
    assert model.calls == 12
    noise = torch.randn(4, 1, 3, 3)
    same = [
        sampler.sample(model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], same[2])
    assert torch.isfinite(a).all()


def test_the_default_sampler_steps_evenly_in_t():
    """The run's default sampler (train.py's and evaluate.py's): 20 calls at timesteps evenly spaced over [0, T-1]
    (benchmarks/README.md, seventh screen: better FID on the default model than log-SNR spacing)."""
    from ddpm.build import build_diffusion, build_sampler
    from ddpm.config import compose_config

    cfg = compose_config()
    ts = build_sampler(build_diffusion(cfg), cfg.sampler).timesteps
    gap = (cfg.schedule.num_timesteps - 1) / 19
    assert cfg.sampler.name == "sde_dpm_solver_pp" and len(ts) == 20
    assert list(ts) == [round(i * gap) for i in range(20)]
