"""Training timesteps (the recipe's p(t)): uniform draws i.i.d. t ~ U{0..T-1}; stratified (Kingma et al. 2021) puts
exactly one t in each 1/B of [0, T) while every t_i stays marginally uniform, so the batch loss is unbiased with less
variance; log-normal puts the mass where the discretised normal of ln sigma does."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, Recipe, make_beta_schedule

T = 10


@pytest.mark.parametrize("t_sampling", ["uniform", "stratified"])
def test_each_timestep_is_marginally_uniform(t_sampling):
    d = Recipe(GaussianDiffusion(make_beta_schedule("cosine", T)), t_sampling=t_sampling)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([d.sample_timesteps(4, torch.device("cpu"), g) for _ in range(20000)])  # [20000, 4]
    assert draws.min() >= 0 and draws.max() <= T - 1
    for position in range(4):  # every slot of the batch, not only their pooled counts
        freq = torch.bincount(draws[:, position], minlength=T).double() / draws.shape[0]
        # binomial standard error of a frequency of 0.1 over 20000 draws: 0.0021; 5 sigma
        assert (freq - 1 / T).abs().max() < 0.0106, (position, freq)


def test_stratified_batch_has_one_timestep_per_stratum():
    d = Recipe(GaussianDiffusion(make_beta_schedule("linear", 1000)), t_sampling="stratified")
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        t = d.sample_timesteps(8, torch.device("cpu"), g)
        assert sorted((t // 125).tolist()) == list(range(8))  # one in each of [0,125), [125,250), ...


def test_stratified_batch_loss_has_lower_variance():
    """The mean over a batch of a function of t: the same expectation, a smaller spread across batches."""
    f = torch.linspace(0, 1, 1000) ** 2  # a loss that depends strongly on t
    means = {}
    for name in ("uniform", "stratified"):
        d = Recipe(GaussianDiffusion(make_beta_schedule("linear", 1000)), t_sampling=name)
        g = torch.Generator().manual_seed(2)
        means[name] = torch.stack(
            [f[d.sample_timesteps(16, torch.device("cpu"), g)].mean() for _ in range(4000)]
        )
    assert (
        abs(means["uniform"].mean() - f.mean()) < 0.01 and abs(means["stratified"].mean() - f.mean()) < 0.01
    )
    assert means["stratified"].std() < 0.25 * means["uniform"].std()


def test_bad_t_sampling_is_refused():
    with pytest.raises(
        ValueError, match="unknown t_sampling .sobol.: choose one of uniform, stratified, lognormal"
    ):
        Recipe(GaussianDiffusion(make_beta_schedule("linear", 100)), t_sampling="sobol")


def recipe_of(*overrides: str) -> Recipe:
    from ddpm.build import build_module
    from ddpm.config import compose_config

    return build_module(compose_config(overrides=list(overrides))).recipe


def test_the_config_switches_it_on():
    d = recipe_of()  # the CPU default (recipe=tuned): log-normal noise levels, whatever the objective
    assert (d.t_sampling, d.log_sigma_mean, d.log_sigma_std) == ("lognormal", 0.5, 1.5)
    assert recipe_of("diffusion=eps").t_sampling == "lognormal"
    assert recipe_of("recipe=paper").t_sampling == "uniform"  # Ho et al.'s
    d = recipe_of("recipe.t_sampling=stratified")
    t = d.sample_timesteps(16, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert sorted((t * 16 // d.diffusion.num_timesteps).tolist()) == list(range(16))


def test_lognormal_draws_follow_the_discretised_normal_of_ln_sigma():
    """P(t) = Phi((m_t - mu) / s) - Phi((m_{t-1} - mu) / s), m_t the midpoint of ln sigma_t and ln sigma_{t+1}, from
    the schedule's own alphabar (recomputed here in float64, independent of the class's tables)."""
    betas = make_beta_schedule("linear", 50)
    mu, s = -0.5, 1.5
    d = Recipe(GaussianDiffusion(betas), t_sampling="lognormal", log_sigma_mean=mu, log_sigma_std=s)
    alphabar = torch.cumprod(1 - betas.double(), 0)
    log_sigma = 0.5 * torch.log((1 - alphabar) / alphabar)
    edges = torch.cat(
        [torch.tensor([-math.inf]), (log_sigma[:-1] + log_sigma[1:]) / 2, torch.tensor([math.inf])]
    )
    cdf = 0.5 * (1 + torch.erf((edges - mu) / (s * math.sqrt(2))))
    expected = cdf[1:] - cdf[:-1]
    n = 200_000
    t = d.sample_timesteps(n, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 49
    freq = torch.bincount(t, minlength=50).double() / n
    se = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 5 * se + 1e-5).all(), (freq - expected).abs().max()
    # the mass is where the normal puts it: most t near ln sigma = mu, not uniform
    assert expected.max() > 3 / 50


def test_lognormal_is_set_from_the_config_and_checked():
    d = recipe_of("recipe=paper", "recipe.t_sampling=lognormal", "recipe.log_sigma_mean=0.5")
    assert (d.t_sampling, d.log_sigma_mean, d.log_sigma_std) == ("lognormal", 0.5, 1.2)
    with pytest.raises(ValueError, match="log_sigma_std must be positive, got 0"):
        Recipe(GaussianDiffusion(make_beta_schedule("linear", 100)), t_sampling="lognormal", log_sigma_std=0)
