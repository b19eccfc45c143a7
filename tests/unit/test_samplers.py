import pytest
import torch

from ddpm.diffusion import (
    DDIMSampler,
    DDPMSampler,
    GaussianDiffusion,
    RespacedModel,
    make_beta_schedule,
    p_sample_loop,
    space_timesteps,
)
from tests.helpers.oracles import (
    CountingModel,
    gaussian_eps,
    gaussian_reverse_mean,
    gaussian_x0_mean,
    point_mass_eps,
)

T = 1000


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_beta_schedule("linear", T), var_type="fixed_small", clip_denoised=False)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("steps", [1, 10, 50, 100, 999, 1000])
def test_space_timesteps_gives_exactly_S_distinct_steps(steps, spacing):
    ts = space_timesteps(T, steps, spacing)
    assert len(ts) == steps == len(set(ts))
    assert ts == sorted(ts) and ts[0] == 0 and ts[-1] <= T - 1


def test_uniform_spacing_reaches_T():
    assert space_timesteps(T, 50)[-1] == T - 1
    with pytest.raises(ValueError, match="between 1 and T=1000"):
        space_timesteps(T, 0)


@pytest.mark.parametrize(
    "cls,steps", [(DDIMSampler, 20), (DDIMSampler, 50), (DDPMSampler, 20), (DDPMSampler, 1000)]
)
def test_a_sampler_with_S_steps_calls_the_network_S_times(diffusion, cls, steps):
    model = CountingModel()
    cls(diffusion, steps=steps).sample(model, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    assert model.calls == steps


def test_ddim_eta1_over_all_steps_has_ddpm_posterior_variance(diffusion):
    ddim = DDIMSampler(diffusion, steps=T, eta=1.0)
    assert torch.allclose(ddim.sigmas[1:] ** 2, diffusion.posterior_variance[1:], rtol=1e-10)
    assert ddim.sigmas[0] == 0


def test_ddim_eta1_step_equals_ddpm_fixed_small_step(diffusion):
    """Same x_t, same noise: DDIM(eta=1, S=T) and DDPM(sigma^2 = betatilde) produce the same x_{t-1}."""
    ddim = DDIMSampler(diffusion, steps=T, eta=1.0)
    model = CountingModel()
    x = torch.randn(64, 1, 4, 4)
    for i in (1, 10, 400, 999):
        t = torch.full((64,), i)
        a = ddim.step(model, x, i, t, torch.Generator().manual_seed(i))
        b = diffusion.p_sample(model, x, t, generator=torch.Generator().manual_seed(i))
        assert torch.allclose(a, b, atol=1e-4), i


def test_ddpm_sampler_over_all_steps_is_algorithm_2(diffusion):
    """All-T DDPM sampling == x_T ~ N(0, I), then x_{t-1} = p_sample(x_t, t) for t = T..1, written out by hand."""
    model = CountingModel()
    a = DDPMSampler(diffusion).sample(model, (3, 1, 2, 2), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x = torch.randn((3, 1, 2, 2), generator=g)
    for i in reversed(range(T)):
        x = diffusion.p_sample(model, x, torch.full((3,), i), generator=g)
    assert torch.allclose(a, x, atol=1e-6)
    assert torch.allclose(
        p_sample_loop(diffusion, model, (3, 1, 2, 2), generator=torch.Generator().manual_seed(5)), x
    )


def test_respaced_ddpm_sampler_with_all_steps_but_other_variance_builds_its_own_chain(diffusion):
    sampler = DDPMSampler(diffusion, var_type="fixed_large")
    assert sampler.chain is not diffusion
    assert torch.allclose(sampler.chain.betas, diffusion.betas, rtol=1e-9)


def test_respaced_ddpm_chain_keeps_the_marginals(diffusion):
    """The respaced chain's alphabar at its steps equals the original alphabar at the chosen timesteps."""
    sampler = DDPMSampler(diffusion, steps=50)
    assert torch.allclose(
        sampler.chain.alphas_cumprod, diffusion.alphas_cumprod[sampler.timesteps], rtol=1e-10
    )


def test_a_respaced_ddpm_step_is_the_exact_reverse_mean_between_its_timesteps():
    """Respaced chain, step i > 0: the mean is E[x_{tau_(i-1)} | x_{tau_i}] for Gaussian data with its optimal model,
    which only holds if the network is called at the original timestep tau_i (RespacedModel's map)."""
    mu, s = -0.2, 0.6
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), clip_denoised=False)
    ab = torch.cumprod(1 - diffusion.betas, 0)
    sampler = DDPMSampler(diffusion, steps=10, var_type="fixed_small")
    model = gaussian_eps(diffusion, mu, s)
    x = torch.linspace(-2, 2, 21, dtype=torch.float64).view(-1, 1)
    for i in (1, 4, 9):
        tau, tau_prev = sampler.timesteps[i], sampler.timesteps[i - 1]
        index = torch.full((x.shape[0],), i)
        out = sampler.chain.p_mean_variance(RespacedModel(model, sampler.timesteps), x, index)
        torch.testing.assert_close(
            out["mean"].double(), gaussian_reverse_mean(ab[tau_prev], ab[tau], mu, s, x), rtol=1e-4, atol=1e-5
        )
        beta_i = 1 - ab[tau] / ab[tau_prev]  # the respaced chain's beta
        expected_var = beta_i * (1 - ab[tau_prev]) / (1 - ab[tau])
        assert out["variance"][0].item() == pytest.approx(expected_var.item(), rel=1e-5)


def test_a_ddim_step_above_t1_is_eq_12_with_the_bayes_x0():
    """DDIM, eta = 0, step i > 0: x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) (x_t - sqrt(ab_t) x0_hat) /
    sqrt(1 - ab_t) with x0_hat = E[x0 | x_t] of Gaussian data, computed by Bayes' rule from the betas alone."""
    mu, s = 0.25, 0.4
    diffusion = GaussianDiffusion(make_beta_schedule("cosine", T), clip_denoised=False)
    ab = torch.cumprod(1 - diffusion.betas, 0)
    ddim = DDIMSampler(diffusion, steps=20, eta=0.0)
    model = gaussian_eps(diffusion, mu, s)
    x = torch.linspace(-2, 2, 21, dtype=torch.float64).view(-1, 1)
    for i in (1, 7, 19):
        tau, tau_prev = ddim.timesteps[i], ddim.timesteps[i - 1]
        x0_hat = gaussian_x0_mean(ab[tau], mu, s, x)
        expected = (
            ab[tau_prev].sqrt() * x0_hat
            + (1 - ab[tau_prev]).sqrt() * (x - ab[tau].sqrt() * x0_hat) / (1 - ab[tau]).sqrt()
        )
        got = ddim.step(model, x, i, torch.full((x.shape[0],), tau), None)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_ddim_eta0_is_deterministic_and_finds_a_point_mass():
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T))
    x0 = torch.tensor([[0.7, -0.2, -0.9]])

    oracle = point_mass_eps(diffusion, x0)
    ddim = DDIMSampler(diffusion, steps=20, eta=0.0)
    a = ddim.sample(oracle, (8, 3), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, x0.expand(8, -1), atol=1e-4)
    noise = torch.randn(8, 3)
    assert torch.equal(ddim.sample(oracle, (8, 3), noise=noise), ddim.sample(oracle, (8, 3), noise=noise))


@pytest.mark.slow
@pytest.mark.parametrize("cls,kwargs", [(DDIMSampler, {"steps": 5, "eta": 0.5}), (DDPMSampler, {"steps": 5})])
def test_compiled_sampler_draws_the_samples_of_the_eager_one(diffusion, cls, kwargs):
    """sampler.compile=true runs the network under torch.compile (CUDA graphs on a GPU): same samples, same noise."""
    from ddpm.models import UNet

    net = UNet(
        image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
        attn_resolutions=(4,), num_groups=4, dropout=0.0,
    ).eval()  # fmt: skip
    for p in net.parameters():  # zero-initialised output layers would make every network output 0
        torch.nn.init.normal_(p, std=0.2)
    shape = (3, 1, 8, 8)
    eager = cls(diffusion, **kwargs).sample(net, shape, generator=torch.Generator().manual_seed(1))
    compiled_sampler = cls(diffusion, **kwargs, compile=True)
    compiled = compiled_sampler.sample(net, shape, generator=torch.Generator().manual_seed(1))
    again = compiled_sampler.sample(net, shape, generator=torch.Generator().manual_seed(1))
    assert eager.abs().mean() > 0.01
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, compiled)


def test_one_ddpm_step_is_the_data_prediction_at_t1(diffusion):
    """A one-step respaced chain has beta'_1 = beta_1, so its posterior mean is x0_theta(x_T, t=1) and no noise is added."""
    x = torch.randn(2, 1, 3, 3)
    out = DDPMSampler(diffusion, steps=1).sample(CountingModel(), x.shape, noise=x.clone())
    t = torch.zeros(2, dtype=torch.long)
    expected = diffusion.predict_x0_from_eps(x, t, CountingModel()(x, t))
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_grid_fid_sample_and_evaluate_sample_with_the_one_sampler_group_node(tmp_path):
    """The validation grid, the validation FID, sample.py and evaluate.py build their sampler from the same node of
    conf/sampler, and the callbacks have no default of their own that could differ from it."""
    from omegaconf import OmegaConf

    from ddpm.config import compose_config
    from ddpm.training import SampleFID, SampleGrid
    from tests.helpers.paths import ROOT

    train = compose_config(ROOT / "conf", "train", [], tmp_path)
    node = OmegaConf.to_container(train.sampler, resolve=True)
    assert node["spacing"] == "uniform"  # the one that a copy of the default in code once left out
    assert OmegaConf.to_container(train.callbacks.sample_grid.sampler, resolve=True) == node
    assert OmegaConf.to_container(train.callbacks.fid.sampler, resolve=True) == node
    for app in ("sample", "evaluate"):
        other = compose_config(ROOT / "conf", app, ["ckpt_path=x.ckpt"], tmp_path)
        assert OmegaConf.to_container(other.sampler, resolve=True) == node
    with pytest.raises(TypeError, match="sampler"):
        SampleGrid()
    with pytest.raises(TypeError, match="sampler"):
        SampleFID()
