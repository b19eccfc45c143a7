import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule
from ddpm.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl
from tests.helpers.oracles import point_mass_eps

GRID = torch.linspace(-1, 1, 256, dtype=torch.float64)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.7, -6.0), (-0.99, -1.0), (0.3, 1.0)])
def test_discretized_decoder_is_a_distribution_over_the_256_levels(mean, log_scale):
    logp = discretized_gaussian_log_likelihood(
        GRID, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
    )
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # an interior bin is the Gaussian mass of [x - 1/255, x + 1/255]
    n = Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(math.exp(log_scale), dtype=torch.float64)
    )
    x = GRID[100]
    assert logp[100].exp().item() == pytest.approx(
        (n.cdf(x + 1 / 255) - n.cdf(x - 1 / 255)).item(), rel=1e-6, abs=1e-15
    )


def test_decoder_is_finite_in_float32_far_from_the_mean():
    # the decoder's real inputs: float32, a confident network (small scale) and bins far from its mean, interior and
    # edge; float32 rounding once turned these into log(0) = -inf and the whole bound into inf
    x = torch.tensor([-1.0, 2 * 100 / 255 - 1, 1.0, 2 * 200 / 255 - 1], dtype=torch.float32)
    mean = torch.tensor([0.9, -0.8, -0.9, 0.95], dtype=torch.float32)
    logp = discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, -4.0))
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    assert (logp < -20).all()  # still (nearly) impossible, as it should be
    near = discretized_gaussian_log_likelihood(x, x, torch.full_like(x, -4.0))
    assert torch.isfinite(near).all() and (near > -2).all()


def test_prior_term_matches_closed_form():
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    ab = d.alphas_cumprod[-1].item()
    # KL(N(sqrt(ab) x, 1 - ab) || N(0, 1)) = 1/2 (ab x^2 + (1 - ab) - 1 - log(1 - ab))
    kl = 0.5 * (ab * x0.double() ** 2 - ab - math.log(1 - ab))
    expected = kl.flatten(1).mean(1) / math.log(2)
    assert torch.allclose(d.prior_bpd(x0).double(), expected, rtol=1e-4)
    assert d.prior_bpd(x0).max() < 1e-4  # alphabar_T ~ 4e-5: the prior term is negligible


def test_bound_of_the_exact_model_for_a_point_mass():
    """Data = one point on the pixel grid, eps-model exact, sigma^2 = betatilde: every KL term is 0 and the bound is
    prior + decoder, the decoder being the bin mass of N(x0, betatilde_2) around x0."""
    d = GaussianDiffusion(make_beta_schedule("linear", 100), var_type="fixed_small")
    x0 = GRID[torch.tensor([3, 128, 200, 254])].float().view(1, 4).expand(5, -1)

    out = d.calc_bpd_loop(point_mass_eps(d, x0), x0, generator=torch.Generator().manual_seed(0))
    assert out["vb_bpd"].shape == (5, 100)
    assert out["vb_bpd"][:, 1:].abs().max() < 1e-4
    sigma = math.sqrt(d.posterior_variance[1].item())
    bin_mass = math.erf((1 / 255) / (sigma * math.sqrt(2)))
    assert out["vb_bpd"][:, 0].mean().item() == pytest.approx(-math.log2(bin_mass), rel=1e-3)
    assert torch.allclose(out["total_bpd"], out["vb_bpd"].sum(1) + out["prior_bpd"])


def test_a_worse_model_has_a_larger_bound():
    d = GaussianDiffusion(make_beta_schedule("linear", 50))
    x0 = GRID[torch.randint(0, 256, (4, 8))].float()
    zero = d.calc_bpd_loop(lambda x, t: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0))
    noisy = d.calc_bpd_loop(
        lambda x, t: torch.randn_like(x) * 3, x0, generator=torch.Generator().manual_seed(0)
    )
    assert bool((noisy["total_bpd"] > zero["total_bpd"]).all())
