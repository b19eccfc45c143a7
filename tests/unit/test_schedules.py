import math

import pytest
import torch

from ddpm.diffusion import SCHEDULES, GaussianDiffusion, make_beta_schedule


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_is_float64_in_open_unit_interval(name):
    betas = make_beta_schedule(name, 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert bool(((betas > 0) & (betas < 1)).all())


def test_linear_matches_ho_et_al():
    betas = make_beta_schedule("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    steps = betas[1:] - betas[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), rtol=1e-9)


def test_linear_alphabar_T_is_essentially_zero():
    alphabar = GaussianDiffusion(make_beta_schedule("linear", 1000)).alphas_cumprod
    assert alphabar[-1].item() < 1e-4
    # the value from prod(1 - beta_t), computed independently in Python floats
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    assert alphabar[-1].item() == pytest.approx(expected, rel=1e-9)


def test_linear_scales_with_T_as_improved_ddpm():
    betas = make_beta_schedule("linear", 250)
    assert betas[0].item() == pytest.approx(4e-4)
    assert betas[-1].item() == pytest.approx(0.08)


def test_cosine_matches_nichol_dhariwal():
    T, s = 1000, 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = make_beta_schedule("cosine", T)
    expected = [min(1 - f(t + 1) / f(t), 0.999) for t in range(T)]
    assert torch.allclose(betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)
    assert betas[-1].item() == 0.999  # clipped: f(T) = 0
    alphabar = GaussianDiffusion(betas).alphas_cumprod
    for t in (0, 10, 500, 900):  # before clipping kicks in, alphabar_t = f(t + 1) / f(0)
        assert alphabar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_quadratic_and_sigmoid_endpoints():
    quad = make_beta_schedule("quadratic", 1000)
    assert quad[0].item() == pytest.approx(1e-4) and quad[-1].item() == pytest.approx(0.02)
    assert torch.allclose(quad.sqrt().diff(), quad.sqrt().diff()[0].expand(999), rtol=1e-6)
    sig = make_beta_schedule("sigmoid", 1000)
    assert bool((sig.diff() > 0).all())
    expected_first = 1e-4 + (0.02 - 1e-4) / (1 + math.exp(6))
    assert sig[0].item() == pytest.approx(expected_first, rel=1e-9)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="unknown beta schedule 'cosin': choose one of linear, cosine"):
        make_beta_schedule("cosin", 1000)


def test_bad_num_timesteps():
    with pytest.raises(ValueError, match="positive integer"):
        make_beta_schedule("linear", 0)
