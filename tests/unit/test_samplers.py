import pytest
import torch

from ddpm.diffusion import DDIMSampler, DDPMSampler, GaussianDiffusion, make_beta_schedule, space_timesteps

T = 1000


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_beta_schedule("linear", T), var_type="fixed_small", clip_denoised=False)


class CountingModel:
    """A deterministic stand-in eps-model that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return 0.1 * x + 1e-4 * t.float().view(-1, *([1] * (x.ndim - 1)))


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
        diffusion.p_sample_loop(model, (3, 1, 2, 2), generator=torch.Generator().manual_seed(5)), x
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


def test_ddim_eta0_is_deterministic_and_finds_a_point_mass():
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T))
    x0 = torch.tensor([[0.7, -0.2, -0.9]])

    def oracle(x_t, t):
        ab = diffusion.alphas_cumprod.float()[t].view(-1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

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
