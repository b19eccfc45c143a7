"""Class conditioning and classifier-free guidance: label dropout, the null class, w = 0, one call per step."""

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from ddpm.diffusion.guidance import ClassConditioned, drop_labels, guided
from ddpm.training import DiffusionModule
from tests.helpers.tiny import tiny_unet

K = 10


def unet(num_classes=None, seed=0):
    torch.manual_seed(seed)
    return tiny_unet(num_classes).eval()


def randomise(net):
    """Random weights everywhere (the UNet zero-initialises its output layer)."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_labels_are_dropped_at_rate_p_uncond(p):
    labels = torch.randint(0, K, (200_000,))
    out = drop_labels(labels, p, K, torch.Generator().manual_seed(0))
    dropped = out == K
    rate = dropped.float().mean().item()
    sigma = (p * (1 - p) / len(labels)) ** 0.5
    assert abs(rate - p) <= 4 * sigma + 1e-12
    assert torch.equal(out[~dropped], labels[~dropped])  # the others are kept as they were


def test_the_null_class_reproduces_an_unconditional_forward():
    uncond = randomise(unet())
    cond = unet(num_classes=K)
    missing, unexpected = cond.load_state_dict(uncond.state_dict(), strict=False)
    assert missing == ["class_emb.weight"] and not unexpected
    with torch.no_grad():
        cond.class_emb.weight[:K].normal_()  # trained classes; the null row stays as initialised: zero
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 50, 99])
    with torch.no_grad():
        ref = uncond(x, t)
        assert torch.equal(cond(x, t), ref)  # y = None is the null class
        assert torch.equal(cond(x, t, torch.full((3,), K)), ref)
        assert not torch.allclose(cond(x, t, torch.tensor([1, 2, 3])), ref)  # a real class changes the output


def test_an_unconditional_unet_refuses_labels():
    with pytest.raises(ValueError, match="unconditional"):
        unet()(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_guidance_zero_reproduces_the_conditional_samples_exactly():
    net = randomise(unet(num_classes=K))
    d = GaussianDiffusion(make_beta_schedule("linear", 100))
    labels = torch.tensor([0, 3, 7, 9])
    noise = torch.randn(4, 1, 8, 8)
    for name in ("ddim", "ddpm", "dpm_solver_pp"):
        sampler = make_sampler(d, name, steps=6)
        plain = sampler.sample(
            lambda x, t: net(x, t, labels),
            noise.shape,
            noise=noise,
            generator=torch.Generator().manual_seed(1),
        )
        model = ClassConditioned(net, labels, K, guidance=0.0)
        got = sampler.sample(model, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1))
        assert torch.equal(got, plain), name
        assert model.evaluations == 6 * 4  # no unconditional pass at w = 0


class Recorder(torch.nn.Module):
    """A conditional network whose output is known: out = x + y (as floats), recording each call's batch."""

    num_classes = K

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, y):
        self.batches.append((x.shape[0], y.clone()))
        return x + y.float().view(-1, 1, 1, 1)


def test_guided_output_is_one_call_on_the_pair_and_mixes_as_1_plus_w():
    net = Recorder()
    labels = torch.tensor([2, 5])
    model = ClassConditioned(net, labels, K, guidance=1.5)
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([3, 3])
    out = model(x, t)
    ((size, y),) = net.batches
    assert size == 4 and torch.equal(y, torch.tensor([2, 5, K, K]))
    # (1 + w) (x + y) - w (x + null)
    expected = 2.5 * labels.float() - 1.5 * K
    assert torch.allclose(out.view(2, -1), expected.view(2, 1).expand(2, 4))


def test_a_sampler_makes_one_network_call_per_step_with_guidance():
    net = Recorder()
    model = ClassConditioned(net, torch.arange(3), K, guidance=2.0)
    make_sampler(GaussianDiffusion(make_beta_schedule("linear", 100)), "unipc", steps=7).sample(
        model, (3, 1, 2, 2)
    )
    assert len(net.batches) == 7 and all(size == 6 for size, _ in net.batches)
    assert model.calls == 7 and model.evaluations == 7 * 6


def test_a_learned_variance_is_taken_from_the_conditional_half():
    cond, uncond = torch.ones(2, 2, 3, 3), torch.zeros(2, 2, 3, 3)
    cond[:, 1] = 0.25
    out = guided(cond, uncond, 3.0, channels=1)
    assert torch.equal(out[:, 0], torch.full((2, 3, 3), 4.0)) and torch.equal(out[:, 1], cond[:, 1])


def test_the_module_spreads_classes_and_refuses_bad_labels():
    module = DiffusionModule(
        randomise(unet(num_classes=K)), GaussianDiffusion(make_beta_schedule("linear", 100)), guidance=1.0
    )
    sampler = make_sampler(module.diffusion, "ddim", steps=2)
    images = module.sample(sampler, 12, generator=torch.Generator().manual_seed(0))
    assert images.shape == (12, 1, 8, 8)
    with pytest.raises(ValueError, match=r"label 10 is outside the model's classes 0..9"):
        module.sample(sampler, 2, labels=torch.tensor([1, 10]))
    uncond = DiffusionModule(unet(), GaussianDiffusion(make_beta_schedule("linear", 100)))
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(sampler, 2, guidance=2.0)


def test_training_drops_labels_and_conditions_on_the_rest():
    module = DiffusionModule(
        unet(num_classes=K), GaussianDiffusion(make_beta_schedule("linear", 100)), p_uncond=0.5
    )
    seen = []
    real_forward = module.net.forward
    module.net.forward = lambda x, t, y=None: (seen.append(y.clone()), real_forward(x, t, y))[1]
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    y = torch.randint(0, K, (64,))
    module.training_step((x0, y), 0)
    (used,) = seen
    kept = used != K
    assert 0 < kept.sum() < 64 and torch.equal(used[kept], y[kept])
    with pytest.raises(ValueError, match="batches carry no labels"):
        module.training_step(x0, 0)
