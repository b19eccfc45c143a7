"""Loss weighting: none is L_simple exactly; min-SNR-gamma (Hang et al. 2023) weighs every objective's MSE so that it
equals min(SNR_t, gamma) times the squared error of the x_0 the network output implies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpm.diffusion import GaussianDiffusion, Recipe, make_beta_schedule

T = 1000
GAMMA = 5.0


def snr_from_betas(betas: torch.Tensor) -> torch.Tensor:
    ab = torch.cumprod(1 - betas.double(), 0)
    return ab / (1 - ab)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_no_weighting_is_the_plain_mse(objective):
    d = GaussianDiffusion(make_beta_schedule("cosine", T), objective=objective)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(8, 1, 4, 4, generator=g) * 2 - 1, torch.randn(8, 1, 4, 4, generator=g)
    t = torch.randint(0, T, (8,), generator=g)
    model = lambda x, t: 0.3 * x  # noqa: E731
    ab = torch.cumprod(1 - d.betas, 0).float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[objective]
    expected = F.mse_loss(model(x_t, t), target, reduction="none").flatten(1).mean(1)
    torch.testing.assert_close(d.training_losses(model, x0, t, noise), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Recipe(d).losses(model, x0, t, noise), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "objective,formula",
    [
        ("eps", lambda snr: snr.clamp(max=GAMMA) / snr),
        ("v", lambda snr: snr.clamp(max=GAMMA) / (snr + 1)),
        ("x0", lambda snr: snr.clamp(max=GAMMA)),
    ],
)
def test_min_snr_weights_are_the_papers_formula(objective, formula):
    betas = make_beta_schedule("linear", T)
    d = Recipe(GaussianDiffusion(betas, objective=objective), loss_weight="min_snr", snr_gamma=GAMMA)
    torch.testing.assert_close(d.loss_weights, formula(snr_from_betas(betas)), rtol=1e-12, atol=0)
    snr = snr_from_betas(betas)
    assert (snr > GAMMA).any() and (snr < GAMMA).any()  # both sides of the clamp are exercised


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    "loss_weight,x0_weight", [("min_snr", lambda snr: snr.clamp(max=GAMMA)), ("x0_mse", torch.ones_like)]
)
def test_weighted_loss_is_the_x0_error_times_its_weight(objective, loss_weight, x0_weight):
    """The defining property, from the forward process alone: with x0_hat the x_0 implied by the output, the weighted
    loss is w(SNR_t) ||x_0 - x0_hat||^2, w = min(SNR, gamma) for min_snr and 1 for x0_mse (eps error = sqrt(SNR) x0
    error, v error = sqrt(SNR + 1) x0 error)."""
    d = GaussianDiffusion(make_beta_schedule("linear", T), objective=objective)
    recipe = Recipe(d, loss_weight=loss_weight, snr_gamma=GAMMA)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(16, 1, 4, 4, generator=g) * 2 - 1, torch.randn(16, 1, 4, 4, generator=g)
    t = torch.linspace(0, T - 1, 16).long()
    outputs = torch.randn(16, 1, 4, 4, generator=g)
    model = lambda x, t: outputs  # noqa: E731
    ab = torch.cumprod(1 - d.betas, 0)[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    out = outputs.double()
    x0_hat = {
        "eps": (x_t - (1 - ab).sqrt() * out) / ab.sqrt(),
        "v": ab.sqrt() * x_t - (1 - ab).sqrt() * out,
        "x0": out,
    }[objective]
    snr = (ab / (1 - ab)).view(-1)
    expected = x0_weight(snr) * (x0.double() - x0_hat).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(recipe.losses(model, x0, t, noise).double(), expected, rtol=2e-3, atol=1e-6)


def test_bad_loss_weight_is_refused():
    with pytest.raises(ValueError, match="unknown loss_weight 'snr': choose one of none, min_snr, x0_mse"):
        Recipe(GaussianDiffusion(make_beta_schedule("linear", 100)), loss_weight="snr")


def test_the_config_switches_it_on():
    from ddpm.build import build_module
    from ddpm.config import compose_config

    cfg = compose_config(overrides=["diffusion=v", "recipe.loss_weight=min_snr", "recipe.snr_gamma=2.0"])
    d = build_module(cfg).recipe
    betas = d.diffusion.betas
    torch.testing.assert_close(
        d.loss_weights, snr_from_betas(betas).clamp(max=2.0) / (snr_from_betas(betas) + 1)
    )
    recipe = build_module(
        compose_config()
    ).recipe  # the default weighs every t 1 (its p(t) weighs them instead)
    assert recipe.loss_weight == "none" and recipe.weights_at(torch.arange(3)) is None
