"""The learned reverse variance (Nichol & Dhariwal 2021): its two limits, L_hybrid, and the variance it learns."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Normal, kl_divergence

from ddpm.build import build_network
from ddpm.diffusion import DDPMSampler, GaussianDiffusion, make_beta_schedule, make_sampler, p_sample_loop
from tests.helpers.oracles import gaussian_eps, point_mass_eps

T = 100
BETAS = make_beta_schedule("linear", T)


def learned(**kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(BETAS, var_type="learned_range", **kwargs)


def with_variance(model, v: float | torch.Tensor):
    """A learned_range network: `model`'s prediction, then the variance values v (a constant or one per t)."""

    def net(x, t):
        values = v[t].view(-1, *([1] * (x.ndim - 1))) if torch.is_tensor(v) else torch.tensor(v)
        return torch.cat([model(x, t), values.to(x.dtype).expand_as(x)], dim=1)

    return net


def drifting_eps(x, t):
    """An imperfect eps-model, so that the mean term of the bound is not zero."""
    return 0.3 * x + 0.01 * t.float().view(-1, 1, 1, 1) + 0.1


@pytest.mark.parametrize("v,fixed", [(1.0, "fixed_large"), (-1.0, "fixed_small")])
def test_forced_interpolation_reproduces_the_fixed_variances_exactly(v, fixed):
    reference = GaussianDiffusion(BETAS, var_type=fixed)
    diffusion = learned()
    shape = (4, 1, 3, 3)
    net = with_variance(drifting_eps, v)
    full = p_sample_loop(diffusion, net, shape, generator=torch.Generator().manual_seed(1))
    full_ref = p_sample_loop(reference, drifting_eps, shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(full, full_ref)
    respaced = DDPMSampler(diffusion, steps=10).sample(net, shape, generator=torch.Generator().manual_seed(2))
    respaced_ref = DDPMSampler(reference, steps=10).sample(
        drifting_eps, shape, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(respaced, respaced_ref)
    # the bound, term by term, including the decoder L_0 at t = 1
    x0 = (torch.randint(0, 256, (3, 1, 4, 4)) / 127.5 - 1).float()
    bpd = diffusion.calc_bpd_loop(net, x0, generator=torch.Generator().manual_seed(3))
    bpd_ref = reference.calc_bpd_loop(drifting_eps, x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(bpd["vb_bpd"], bpd_ref["vb_bpd"])
    assert torch.equal(bpd["total_bpd"], bpd_ref["total_bpd"])


def test_the_ode_samplers_use_only_the_prediction_channels():
    shape = (2, 1, 3, 3)
    for name in ("ddim", "dpm_solver_pp", "unipc"):
        got = make_sampler(learned(), name, steps=10).sample(
            with_variance(drifting_eps, 0.3), shape, noise=torch.ones(shape)
        )
        ref = make_sampler(GaussianDiffusion(BETAS), name, steps=10).sample(
            drifting_eps, shape, noise=torch.ones(shape)
        )
        assert torch.equal(got, ref)


def test_interpolation_is_in_log_space_between_beta_and_betatilde():
    d = learned()
    t = torch.tensor([5, 50])
    log_var = d.learned_log_variance(torch.zeros(2, 1, 1, 1), t).view(-1).double()
    # f = 1/2: the geometric mean of beta_t and betatilde_t
    expected = 0.5 * (torch.log(BETAS[t]) + torch.log(d.posterior_variance[t]))
    assert torch.allclose(log_var, expected, rtol=1e-5)


def test_l_hybrid_is_l_simple_plus_the_weighted_kl_with_the_mean_held_fixed():
    """Against the bound written out independently: posterior by its formula, KL by torch.distributions."""
    d = learned(clip_denoised=True)  # the training bound never clips (Nichol & Dhariwal's code)
    torch.manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1
    t = torch.tensor([1, 3, 10, 40, 70, 99])
    noise = torch.randn_like(x0)
    v = torch.rand(T) * 2 - 1
    prediction = drifting_eps(d.q_sample(x0, t, noise), t).requires_grad_(True)
    values = v[t].view(-1, 1, 1, 1).expand_as(x0).clone().requires_grad_(True)
    loss = d.training_losses(lambda *_: torch.cat([prediction, values], 1), x0, t, noise)

    b, ab = BETAS.double(), d.alphas_cumprod
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    k = lambda a: a[t].view(-1, 1, 1, 1)  # noqa: E731
    x_t = k(ab).sqrt() * x0.double() + (1 - k(ab)).sqrt() * noise.double()
    post_mean = (k(ab_prev).sqrt() * k(b) * x0.double() + (1 - k(b)).sqrt() * (1 - k(ab_prev)) * x_t) / (
        1 - k(ab)
    )
    post_var = k(b) * (1 - k(ab_prev)) / (1 - k(ab))
    model_mean = (x_t - k(b) / (1 - k(ab)).sqrt() * prediction.detach().double()) / (1 - k(b)).sqrt()
    f = (k(v.double()) + 1) / 2
    fixed_large = torch.cat([d.posterior_variance[1:2], b[1:]])
    fixed_small = torch.cat([d.posterior_variance[1:2], d.posterior_variance[1:]])
    model_var = torch.exp(f * torch.log(k(fixed_large)) + (1 - f) * torch.log(k(fixed_small)))
    kl = kl_divergence(Normal(post_mean, post_var.sqrt()), Normal(model_mean, model_var.sqrt()))
    kl_bits = kl.flatten(1).mean(1) / math.log(2)
    mse = ((prediction.detach().double() - noise.double()) ** 2).flatten(1).mean(1)
    expected = mse + 0.001 * T * kl_bits
    assert torch.allclose(loss.double(), expected, rtol=1e-4)

    # the mean gets the gradient of L_simple alone; the variance that of the bound alone
    loss.sum().backward()
    assert torch.allclose(prediction.grad, 2 * (prediction.detach() - noise) / x0[0].numel(), atol=1e-7)
    assert values.grad.abs().sum() > 0


def test_decoder_term_at_t1_is_part_of_l_hybrid():
    d = learned()
    x0 = (torch.randint(0, 256, (2, 1, 4, 4)) / 127.5 - 1).float()
    t = torch.zeros(2, dtype=torch.long)
    noise = torch.randn_like(x0)
    out = d.training_losses(with_variance(point_mass_eps(d, x0), 0.0), x0, t, noise)
    mse = torch.zeros(2)  # the exact eps model
    assert (out > mse + 1e-6).all()  # -log p(x0 | x1) of a discretised Gaussian is positive


def test_minimising_the_bound_learns_the_true_reverse_variance():
    """For data x0 ~ N(mu, s^2) and the exact mean, the KL-optimal sigma_t^2 is the true Var(x_{t-1} | x_t), known by
    Bayes' rule: var_prev (1 - a var_prev / var_t) with var_prev = alphabar_{t-1} s^2 + 1 - alphabar_{t-1},
    a = alpha_t, var_t = a var_prev + 1 - a. Minimise the bound over v by gradient descent and compare."""
    mu, s = 0.3, 0.1
    d = learned(clip_denoised=False)
    ts = [1, 2, 4, 15]
    torch.manual_seed(0)
    n = 20000
    t = torch.tensor(ts).repeat_interleave(n)
    x0 = mu + s * torch.randn(len(t), 1, 1, 1)
    noise = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, noise)
    # the exact mean of the reverse step is the posterior mean at the Bayes x0: use the x0-optimal eps
    eps = gaussian_eps(d, mu, s)(x_t, t).detach()
    v = torch.zeros(T, requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        net = lambda *_: torch.cat([eps, v[t].view(-1, 1, 1, 1)], 1)  # noqa: E731
        d.training_losses(net, x0, t, noise).mean().backward()
        opt.step()
    learned_var = d.learned_log_variance(v.detach()[ts].view(-1, 1, 1, 1), torch.tensor(ts)).exp().view(-1)
    ab = d.alphas_cumprod[ts]
    ab_prev = d.alphas_cumprod[[i - 1 for i in ts]]
    a = ab / ab_prev
    var_prev = ab_prev * s**2 + 1 - ab_prev
    true_var = var_prev * (1 - a * var_prev / (a * var_prev + 1 - a))
    assert (true_var > d.posterior_variance[ts]).all() and (true_var < BETAS[ts]).all()  # inside the range
    assert torch.allclose(learned_var.double(), true_var, rtol=0.03)
    # ...which at t = 2 (index) is far from either fixed choice: ~1.35x below beta_t, ~1.66x above betatilde_t
    assert (learned_var[1] / d.posterior_variance[2]).item() > 1.25
    assert (BETAS[2] / learned_var[1]).item() > 1.25


def test_the_network_outputs_twice_the_channels_when_it_learns_the_variance():
    cfg = OmegaConf.create(
        {
            "model": {
                "_target_": "ddpm.models.UNet",
                "image_size": 8,
                "in_channels": 1,
                "base_channels": 8,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [4],
                "num_groups": 4,
            },
            "diffusion": {"var_type": "learned_range"},
        }
    )
    assert build_network(cfg).out_channels == 2
    cfg.diffusion.var_type = "fixed_large"
    assert build_network(cfg).out_channels == 1


@pytest.mark.parametrize(
    "learned_model,var_type", [(True, "fixed_small"), (True, "fixed_large"), (False, "learned_range")]
)
def test_a_sampler_variance_that_does_not_fit_the_network_is_refused(learned_model, var_type):
    d = learned() if learned_model else GaussianDiffusion(BETAS)
    with pytest.raises(ValueError, match="does not fit this model"):
        DDPMSampler(d, steps=10, var_type=var_type)
