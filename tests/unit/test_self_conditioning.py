"""Self-conditioning (Chen et al. 2022): the network's extra input, the training coin, and the estimate each call of a
chain receives, checked against x_0 computed here from the eps parameterisation (x_0 = (x_t - sqrt(1 - abar) eps) /
sqrt(abar), clipped to [-1, 1])."""

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from ddpm.diffusion.guidance import ClassConditioned
from ddpm.diffusion.recipe import Recipe, self_condition_input
from ddpm.diffusion.self_conditioning import SelfConditioned, refined
from ddpm.training import DiffusionModule
from tests.helpers.tiny import tiny_unet

T = 100


def diffusion(**kwargs):
    return GaussianDiffusion(make_beta_schedule("linear", T), **kwargs)


def x0_from_eps(x_t, t, eps):
    """x_0 of the eps parameterisation, clipped: the diffusion's default data prediction, derived independently."""
    abar = torch.cumprod(1 - make_beta_schedule("linear", T), 0)[t].float().view(-1, 1, 1, 1)
    return ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)


def randomise(net):
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


class Recorder(torch.nn.Module):
    """An eps-network whose output depends on x, t and x_cond, recording every call's (x, t, x_cond, output)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.3))
        self.calls = []

    def forward(self, x, t, y=None, x_cond=None):
        out = self.scale * x + 0.5 * x_cond + 1e-3 * t.float().view(-1, 1, 1, 1)
        self.calls.append((x.clone(), t.clone(), x_cond.clone(), out.detach().clone()))
        return out


def test_the_unet_takes_the_estimate_as_more_input_channels():
    torch.manual_seed(0)
    net = randomise(tiny_unet(self_condition=True)).eval()
    assert net.conv_in.in_channels == 2 and net.in_channels == 1
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 50, 99])
    with torch.no_grad():
        empty = net(x, t)
        assert torch.equal(net(x, t, x_cond=torch.zeros_like(x)), empty)  # no estimate is the zero estimate
        assert not torch.allclose(net(x, t, x_cond=torch.ones_like(x)), empty)
    with pytest.raises(ValueError, match="not self-conditioned"):
        tiny_unet()(x, t, x_cond=x)


def test_training_feeds_the_detached_prediction_for_half_of_the_batches():
    net = Recorder()
    x_t, t = torch.randn(4, 1, 2, 2), torch.tensor([5, 20, 60, 99])
    used = 0
    n = 400
    for seed in range(n):
        net.calls.clear()
        cond = self_condition_input(net, x0_from_eps, x_t, t, torch.Generator().manual_seed(seed))
        if not net.calls:
            assert torch.equal(cond, torch.zeros_like(x_t))
            continue
        used += 1
        ((_, _, x_cond, out),) = net.calls
        assert torch.equal(x_cond, torch.zeros_like(x_t))  # the first pass has no estimate
        assert torch.allclose(cond, x0_from_eps(x_t, t, out)) and not cond.requires_grad
    assert abs(used / n - 0.5) < 4 * (0.25 / n) ** 0.5  # a fair coin, within 4 standard deviations


def test_the_loss_is_that_of_the_second_pass_and_only_it_carries_gradient():
    d = diffusion(objective="eps", self_condition=True)
    net = Recorder()
    x0, t, noise = torch.rand(4, 1, 2, 2) * 2 - 1, torch.tensor([5, 20, 60, 99]), torch.randn(4, 1, 2, 2)
    seed = next(s for s in range(100) if torch.rand((), generator=torch.Generator().manual_seed(s)) < 0.5)
    loss = Recipe(d).losses(net, x0, t, noise, generator=torch.Generator().manual_seed(seed))
    (x_t, _, zeros, first), (x_t2, _, x_cond, second) = net.calls
    assert torch.equal(zeros, torch.zeros_like(x0)) and torch.equal(x_t2, x_t)
    assert torch.allclose(x_cond, x0_from_eps(x_t, t, first))
    assert torch.allclose(loss, ((second - noise) ** 2).flatten(1).mean(1))
    # d loss / d scale through the second pass only: mean over examples of 2 (out - eps) x_t
    loss.mean().backward()
    expected = (2 * (second - noise) * x_t).flatten(1).mean(1).mean()
    assert torch.allclose(net.scale.grad, expected)


@pytest.mark.parametrize(("name", "steps"), [("ddpm", 5), ("ddim", 6), ("dpm_solver_pp", 6), ("unipc", 6)])
def test_each_call_of_a_chain_sees_the_previous_calls_x0(name, steps):
    d = diffusion(objective="eps")
    net = Recorder()
    make_sampler(d, name, steps=steps).sample(
        SelfConditioned(net, d.data_prediction), (3, 1, 2, 2), generator=torch.Generator().manual_seed(0)
    )
    assert len(net.calls) == steps
    assert torch.equal(net.calls[0][2], torch.zeros(3, 1, 2, 2))
    ts = [int(c[1][0]) for c in net.calls]
    assert ts == sorted(ts, reverse=True) and ts[0] == T - 1  # original timesteps, also on a respaced chain
    for (x, t, _, out), (_, _, x_cond, _) in zip(net.calls, net.calls[1:], strict=False):
        assert torch.allclose(x_cond, x0_from_eps(x, t, out), atol=1e-6)


def test_a_batch_of_another_shape_starts_from_zeros():
    d = diffusion(objective="eps")
    net = Recorder()
    model = SelfConditioned(net, d.data_prediction)
    model(torch.randn(3, 1, 2, 2), torch.full((3,), 50))
    model(torch.randn(2, 1, 2, 2), torch.full((2,), 40))
    assert torch.equal(net.calls[1][2], torch.zeros(2, 1, 2, 2))


def test_refined_conditions_the_second_call_on_the_first():
    d = diffusion(objective="eps")
    net = Recorder()
    x, t = torch.randn(3, 1, 2, 2), torch.tensor([10, 50, 90])
    out = refined(net, d.data_prediction)(x, t)
    (_, _, zeros, first), (_, _, x_cond, second) = net.calls
    assert torch.equal(zeros, torch.zeros_like(x)) and torch.allclose(x_cond, x0_from_eps(x, t, first))
    assert torch.equal(out, second)


def test_guidance_passes_the_estimate_to_both_halves():
    calls = []

    def net(x, t, y, x_cond):
        calls.append((y.clone(), x_cond.clone()))
        return x + x_cond

    labels = torch.tensor([1, 4])
    x_cond = torch.randn(2, 1, 2, 2)
    ClassConditioned(net, labels, 10, guidance=2.0)(
        torch.zeros(2, 1, 2, 2), torch.tensor([3, 3]), x_cond=x_cond
    )
    ((y, seen),) = calls
    assert torch.equal(y, torch.tensor([1, 4, 10, 10])) and torch.equal(seen, torch.cat([x_cond, x_cond]))


def test_the_module_trains_and_samples_a_self_conditioned_class_conditional_network():
    torch.manual_seed(0)
    module = DiffusionModule(
        randomise(tiny_unet(num_classes=10, self_condition=True)),
        diffusion(self_condition=True),
        guidance=1.0,
    )
    x0, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (8,))
    calls = []
    module.net.register_forward_hook(lambda *_: calls.append(1))
    passes = set()
    for step in range(8):
        # outside a Trainer global_step stays 0: vary the noise key by its seed
        module.hparams.noise_seed = step
        before = len(calls)
        loss = module.training_step((x0, y), step)
        passes.add(len(calls) - before)
        assert torch.isfinite(loss)
        loss.backward()
    # both sides of the coin: one pass, or a first pass for the estimate and then the loss's
    assert passes == {1, 2}
    assert module.net.conv_in.weight.grad.abs().sum() > 0
    for name in ("ddpm", "dpm_solver_pp"):
        images = module.sample(
            make_sampler(module.diffusion, name, steps=4), 6, generator=torch.Generator().manual_seed(0)
        )
        assert images.shape == (6, 1, 8, 8) and torch.isfinite(images).all()
