import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, naive_step, p_sample_loop, q_step
from tests.helpers.oracles import gaussian_eps, gaussian_reverse_mean, point_mass_eps

T = 1000


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_beta_schedule("linear", T))


def test_closed_form_matches_simulated_markov_chain(diffusion):
    """x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) eps vs. stepping q(x_t | x_{t-1}) t times."""
    torch.manual_seed(0)
    n = 40_000
    x0 = torch.tensor([-1.0, -0.3, 0.0, 0.5, 1.0], dtype=torch.float64)
    x = x0.expand(n, -1).clone()
    checkpoints = {0, 9, 99, 499, 999}
    for i in range(T):
        beta = diffusion.betas[i]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn_like(x)
        if i in checkpoints:
            t = torch.full((5,), i)
            mean, var = diffusion.q_mean_variance(x0.float(), t)
            # 6 standard errors: the mean's is sqrt(var / n), the variance's is var * sqrt(2 / n)
            se_mean = (var.double() / n).sqrt()
            assert (x.mean(0) - mean.double()).abs().max() < 6 * se_mean.max(), i
            assert (x.var(0) - var.double()).abs().max() < 6 * var.max() * math.sqrt(2 / n), i
            closed = diffusion.q_sample(x0.float().expand(n, -1), t.expand(n, -1)[:, 0], torch.randn(n, 5))
            assert (closed.double().mean(0) - x.mean(0)).abs().max() < 8 * se_mean.max()


def test_q_sample_is_the_closed_form_with_square_root_noise_coefficient(diffusion):
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 10, 500, 999])
    ab = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    assert torch.allclose(diffusion.q_sample(x0, t, noise), expected, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "quadratic", "sigmoid"])
def test_variance_preserving_for_unit_variance_data(schedule):
    """Unit-variance (non-Gaussian, +-1) data stays unit variance at every t, and x_T is N(0, I)-like."""
    diffusion = GaussianDiffusion(make_beta_schedule(schedule, T))
    torch.manual_seed(1)
    x0 = torch.randint(0, 2, (200_000,)).float() * 2 - 1
    for i in (0, 100, 300, 600, 999):
        x_t = diffusion.q_sample(x0, torch.full((x0.shape[0],), i))
        assert x_t.var().item() == pytest.approx(1.0, abs=0.02), i
    ab_T = diffusion.alphas_cumprod[-1].item()
    assert ab_T < 1e-3
    x_T = diffusion.q_sample(torch.ones(100_000), torch.full((100_000,), T - 1))
    assert x_T.mean().item() == pytest.approx(math.sqrt(ab_T), abs=0.01)  # x0 = 1 is all but forgotten
    assert x_T.var().item() == pytest.approx(1.0, abs=0.02)


def test_naive_chain_is_not_variance_preserving_and_q_step_is(diffusion):
    """Contrast (notebook 01 runs these two steps): the naive x_t = x_{t-1} + sqrt(beta_t) eps keeps the mean of x0
    and its variance grows as Var(x0) + sum beta_s; the forward chain's q_step keeps unit-variance data at unit
    variance and forgets the mean as sqrt(alphabar_t)."""
    g = torch.Generator().manual_seed(0)
    x0 = 1.0 + torch.randn(50_000, generator=g)  # mean 1, variance 1
    naive, vp = x0.clone(), x0.clone()
    for i in range(T):
        eps = torch.randn(x0.shape, generator=g)
        naive, vp = (
            naive_step(naive, diffusion.betas[i].float(), eps),
            q_step(vp, diffusion.betas[i].float(), eps),
        )
    assert naive.mean().item() == pytest.approx(1.0, abs=0.03)  # the mean never forgets x0
    assert naive.var().item() == pytest.approx(1.0 + diffusion.betas.sum().item(), rel=0.03)  # 1 + 10.02
    assert vp.var().item() == pytest.approx(1.0, abs=0.03)
    assert vp.mean().item() == pytest.approx(math.sqrt(diffusion.alphas_cumprod[-1].item()), abs=0.02)


def test_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): product of two Gaussians in x_{t-1}."""
    x0, x_t = torch.randn(6, 3), torch.randn(6, 3)
    t = torch.tensor([1, 2, 10, 100, 500, 999])
    mean, var, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
    b = diffusion.betas[t].view(-1, 1)
    a = 1 - b
    ab_prev = diffusion.alphas_cumprod[t - 1].view(-1, 1)
    # prior N(sqrt(ab_prev) x0, 1 - ab_prev); likelihood of x_{t-1}: x_t ~ N(sqrt(a) x_{t-1}, b)
    precision = 1 / (1 - ab_prev) + a / b
    bayes_var = 1 / precision
    bayes_mean = bayes_var * (ab_prev.sqrt() * x0.double() / (1 - ab_prev) + a.sqrt() * x_t.double() / b)
    assert torch.allclose(var.double(), bayes_var.expand(-1, 3), rtol=1e-5)
    assert torch.allclose(mean.double(), bayes_mean, rtol=1e-4, atol=1e-5)
    # at the paper's t = 1 the posterior is a point mass at x0
    mean0, var0, _ = diffusion.q_posterior_mean_variance(x0, x_t, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(mean0, x0, atol=1e-6) and bool((var0 == 0).all())


def test_posterior_variance_formula(diffusion):
    b, ab = diffusion.betas, diffusion.alphas_cumprod
    expected = b[1:] * (1 - ab[:-1]) / (1 - ab[1:])
    assert torch.allclose(diffusion.posterior_variance[1:], expected, rtol=1e-12)


def test_reverse_mean_is_the_papers_formula_without_clipping():
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), clip_denoised=False)
    torch.manual_seed(2)
    x_t, eps = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([1, 5, 50, 500, 999])
    out = diffusion.p_mean_variance(lambda x, tt: eps, x_t, t)
    b = diffusion.betas[t].float().view(-1, 1, 1, 1)
    ab = diffusion.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    paper = (x_t - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()
    assert torch.allclose(out["mean"], paper, atol=1e-4)
    assert torch.allclose(out["variance"], b, rtol=1e-6)  # fixed_large: sigma^2 = beta


def test_parameterisations_round_trip(diffusion):
    x0, noise = torch.rand(4, 2, 3, 3) * 2 - 1, torch.randn(4, 2, 3, 3)
    t = torch.tensor([0, 3, 300, 999])
    x_t = diffusion.q_sample(x0, t, noise)
    assert torch.allclose(diffusion.predict_x0_from_eps(x_t, t, noise), x0, atol=1e-3)
    assert torch.allclose(diffusion.predict_eps_from_x0(x_t, t, x0), noise, atol=1e-3)
    v = diffusion.get_v(x0, t, noise)
    assert torch.allclose(diffusion.predict_x0_from_v(x_t, t, v), x0, atol=1e-5)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_loss_is_zero_for_the_true_target(objective):
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), objective=objective)
    x0, noise = torch.rand(8, 1, 5, 5) * 2 - 1, torch.randn(8, 1, 5, 5)
    t = torch.randint(0, T, (8,))
    oracle = {
        "eps": lambda x_t, tt: noise,
        "x0": lambda x_t, tt: x0,
        "v": lambda x_t, tt: diffusion.get_v(x0, tt, noise),
    }[objective]
    assert diffusion.training_losses(oracle, x0, t, noise).abs().max().item() < 1e-10
    wrong = diffusion.training_losses(lambda x_t, tt: torch.zeros_like(x_t), x0, t, noise)
    assert bool((wrong > 1e-3).all())


@pytest.mark.parametrize("var_type,name", [("fixed_large", "betas"), ("fixed_small", "posterior_variance")])
def test_p_sample_adds_sigma_t_noise_except_at_t1(var_type, name):
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), var_type=var_type, clip_denoised=False)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x_t = torch.zeros(100_000, 1)
    for i in (1, 50, 999):
        t = torch.full((x_t.shape[0],), i)
        mean = diffusion.p_mean_variance(model, x_t, t)["mean"]
        x_prev = diffusion.p_sample(model, x_t, t)
        sigma2 = getattr(diffusion, name)[i].item()
        assert (x_prev - mean).var().item() == pytest.approx(sigma2, rel=0.02)
    t0 = torch.zeros(4, dtype=torch.long)
    a = diffusion.p_sample(model, torch.ones(4, 1), t0, generator=torch.Generator().manual_seed(0))
    b = diffusion.p_sample(model, torch.ones(4, 1), t0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # the last step returns the mean


@pytest.mark.parametrize("var_type", ["fixed_large", "fixed_small"])
def test_a_reverse_step_at_t_above_1_is_the_exact_reverse_mean_plus_sigma_t_noise(var_type):
    """For Gaussian data with its optimal eps-model, mu_theta(x_t, t) is E[x_{t-1} | x_t] (Bayes' rule on the joint
    Gaussian, computed here from the betas alone) and p_sample adds noise of variance beta_t or betatilde_t."""
    mu, s = 0.3, 0.5
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), var_type=var_type, clip_denoised=False)
    betas = diffusion.betas  # float64 input; everything below is derived from it here
    ab = torch.cumprod(1 - betas, 0)
    model = gaussian_eps(diffusion, mu, s)
    x_t = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64).view(-1, 1)
    for i in (1, 10, 300, 900):
        t = torch.full((x_t.shape[0],), i)
        mean = diffusion.p_mean_variance(model, x_t, t)["mean"]
        expected = gaussian_reverse_mean(ab[i - 1], ab[i], mu, s, x_t)
        torch.testing.assert_close(mean.double(), expected, rtol=1e-4, atol=1e-5)
        many = torch.full((200_000, 1), 0.7)
        drawn = diffusion.p_sample(
            model, many, torch.full((200_000,), i), generator=torch.Generator().manual_seed(i)
        )
        sigma2 = betas[i] if var_type == "fixed_large" else betas[i] * (1 - ab[i - 1]) / (1 - ab[i])
        assert drawn.var().item() == pytest.approx(sigma2.item(), rel=0.02)
        assert drawn.mean().item() == pytest.approx(
            gaussian_reverse_mean(ab[i - 1], ab[i], mu, s, 0.7).item(), abs=3e-4
        )


def test_ancestral_sampling_recovers_a_point_mass():
    """With the exact eps of a one-point data distribution, the reverse chain lands on that point."""
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T))
    x0 = torch.tensor([[-0.8, 0.0, 0.3, 0.9]])
    out = p_sample_loop(
        diffusion, point_mass_eps(diffusion, x0), (16, 4), generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(out, x0.expand(16, -1), atol=1e-3)


def test_invalid_arguments():
    betas = make_beta_schedule("linear", 100)
    with pytest.raises(ValueError, match="unknown objective"):
        GaussianDiffusion(betas, objective="score")
    with pytest.raises(ValueError, match="unknown var_type"):
        GaussianDiffusion(betas, var_type="learned")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        GaussianDiffusion(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="use more timesteps or a smaller beta_end"):
        make_beta_schedule("linear", 10)


def test_diffusion_math_stays_float32_under_bf16_autocast():
    from ddpm.diffusion import make_sampler

    d = GaussianDiffusion(make_beta_schedule("linear", 100))
    net = torch.nn.Conv2d(1, 1, 3, padding=1)

    def model(x, t):
        return net(x)

    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    t = torch.tensor([5, 90])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x0, t).dtype == torch.bfloat16  # the network runs in bf16...
        x_t = d.q_sample(x0, t)
        loss = d.training_losses(model, x0, t)
        sample = make_sampler(d, "ddim", steps=3).sample(
            model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0)
        )
    assert x_t.dtype == loss.dtype == sample.dtype == torch.float32  # ...the diffusion math does not
