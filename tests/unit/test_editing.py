"""Inpainting, image-to-image and interpolation, against networks whose answer is known: for data that is one of two
images A or B, the exact x_0 network is the posterior mean over the two (Bayes' rule: `stable_target` over {A, B}),
and for Gaussian data the exact eps network is closed-form (tests/helpers/oracles.py)."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule, make_sampler
from ddpm.diffusion.editing import ddim_invert, img2img, inpaint, interpolate, repaint_levels, slerp
from ddpm.diffusion.recipe import stable_target
from tests.helpers.oracles import gaussian_eps

T = 1000
SAMPLERS = [("ddpm", 50), ("ddim", 50), ("dpm_solver_pp", 20), ("sde_dpm_solver_pp", 20), ("unipc", 20)]


def two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """A and B: 1x8x8 images that differ in both halves (left: columns 0-3, right: 4-7)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    b = -a.flip(-1)
    return a, b


def two_point_x0_model(diffusion: GaussianDiffusion, data: torch.Tensor):
    """The exact x_0 network for data uniform over the rows of `data`: E[x_0 | x_t] (Bayes' rule)."""

    def model(x_t, t):
        return stable_target(x_t, diffusion.sqrt_alphas_cumprod[t], data)

    return model


def test_repaint_levels_follow_lugmayr_et_als_schedule():
    assert repaint_levels(4) == [4, 3, 2, 1, 0]
    levels = repaint_levels(6, jump_length=2, jump_n_sample=3)
    assert levels[0] == 6 and levels[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(levels, levels[1:], strict=False))  # one level at a time
    downs = sum(b < a for a, b in zip(levels, levels[1:], strict=False))
    assert (
        downs == 6 + 2 * 2 * 2
    )  # S steps, plus (jump_n_sample - 1) x jump_length at the two jump points 4 and 2
    with pytest.raises(ValueError, match="at least 1"):
        repaint_levels(6, 0, 1)


@pytest.mark.parametrize("name,steps", SAMPLERS)
@pytest.mark.parametrize("jumps", [(1, 1), (5, 3)])
def test_inpainting_fills_the_missing_half_with_the_image_the_known_half_belongs_to(name, steps, jumps):
    d = GaussianDiffusion(make_beta_schedule("linear", T), objective="x0", clip_denoised=False)
    a, b = two_images()
    model = two_point_x0_model(d, torch.cat([a, b]))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1  # the left half is known: A's
    known = torch.cat([a, a, b])  # A twice, B once: each must be completed to itself
    sampler = make_sampler(d, name, steps=steps)
    out = inpaint(
        sampler,
        model,
        known,
        mask,
        generator=torch.Generator().manual_seed(1),
        jump_length=jumps[0],
        jump_n_sample=jumps[1],
    )
    assert torch.equal(out[..., :4], known[..., :4])  # the known pixels, exactly
    for got, want, other in ((out[0], a, b), (out[1], a, b), (out[2], b, a)):
        assert (got[..., 4:] - want[0, ..., 4:]).abs().max() < 0.05, (
            (got[..., 4:] - want[0, ..., 4:]).abs().max()
        )
        assert (got[..., 4:] - other[0, ..., 4:]).abs().max() > 0.5


@pytest.mark.parametrize("name,steps", SAMPLERS)
def test_img2img_at_0_is_the_input_and_at_1_is_sampling(name, steps):
    d = GaussianDiffusion(make_beta_schedule("linear", T), objective="x0", clip_denoised=False)
    a, b = two_images()
    model = two_point_x0_model(d, torch.cat([a, b]))
    sampler = make_sampler(d, name, steps=steps)
    x = torch.cat([a, b])
    assert torch.equal(img2img(sampler, model, x, 0.0), x)
    full = img2img(sampler, model, x, 1.0, generator=torch.Generator().manual_seed(2))
    plain = sampler.sample(model, x.shape, generator=torch.Generator().manual_seed(2))
    assert torch.equal(full, plain)
    # a little noise: the data the input is nearest (A stays A, B stays B)
    light = img2img(sampler, model, x, 0.2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(light, x, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\], got 1.5"):
        img2img(sampler, model, x, 1.5)


def test_img2img_forgets_more_of_the_input_at_higher_strength():
    """From an input nearer A than B: light noising always returns A, heavy noising forgets which it was near and
    lands on either image."""
    d = GaussianDiffusion(make_beta_schedule("linear", T), objective="x0", clip_denoised=False)
    a, b = two_images()
    model = two_point_x0_model(d, torch.cat([a, b]))
    sampler = make_sampler(d, "ddim", steps=50)
    near_a = (0.7 * a + 0.3 * b).expand(32, -1, -1, -1)
    g = torch.Generator().manual_seed(4)

    def lands_on_a(x: torch.Tensor) -> torch.Tensor:
        return (x - a).flatten(1).norm(dim=1) < (x - b).flatten(1).norm(dim=1)

    assert lands_on_a(img2img(sampler, model, near_a, 0.1, generator=g)).all()
    assert 4 <= int(lands_on_a(img2img(sampler, model, near_a, 0.95, generator=g)).sum()) <= 28


def test_ddim_inversion_is_the_probability_flow_map_for_gaussian_data():
    """For x0 ~ N(mu, s^2 I) the exact network's probability-flow ODE maps x0 to (x0 - mu) / s at x_T (up to the
    sqrt(alphabar_T) left of the data); DDIM inversion and DDIM decoding converge to it and back as steps grow."""
    d = GaussianDiffusion(make_beta_schedule("linear", T), clip_denoised=False)
    mu, s = 0.3, 0.5
    model = gaussian_eps(d, mu, s)
    x0 = mu + s * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (50, 200, 1000):
        sampler = make_sampler(d, "ddim", steps=steps, eta=0.0)
        z = ddim_invert(d, model, x0, sampler.timesteps)
        back = sampler.sample(model, x0.shape, noise=z)
        errors.append(((back - x0).abs().max().item(), (z - (x0 - mu) / s).abs().max().item()))
    assert errors[0][0] > errors[1][0] > errors[2][0] and errors[2][0] < 0.02  # encode -> decode returns x0
    assert errors[2][1] < 0.02  # ...through the exact latent


def test_interpolation_ends_at_its_two_images():
    d = GaussianDiffusion(make_beta_schedule("linear", T), clip_denoised=False)
    mu, s = 0.0, 0.5
    model = gaussian_eps(d, mu, s)
    g = torch.Generator().manual_seed(5)
    x_a, x_b = s * torch.randn(1, 1, 4, 4, generator=g), s * torch.randn(1, 1, 4, 4, generator=g)
    path = interpolate(make_sampler(d, "ddim", steps=1000, eta=0.0), model, x_a, x_b, k=5)
    assert path.shape == (5, 1, 4, 4)
    torch.testing.assert_close(path[0], x_a[0], atol=0.02, rtol=0)
    torch.testing.assert_close(path[-1], x_b[0], atol=0.02, rtol=0)
    assert (path[2] - x_a[0]).abs().max() > 0.05 and (path[2] - x_b[0]).abs().max() > 0.05  # a point between


def test_slerp_keeps_the_norm_of_orthogonal_noise():
    a, b = torch.zeros(1, 4), torch.zeros(1, 4)
    a[0, 0], b[0, 1] = 2.0, 2.0
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid.norm(), torch.tensor(2.0))  # linear interpolation would give 1.41
    assert torch.equal(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)


def test_a_trained_networks_ddim_inversion_decodes_back_to_its_image():
    """Encode then decode with DDIM (eta = 0) on a trained network (the small legacy checkpoint, T = 100): the held-out
    digits come back within 0.01 (measured 2e-3 at 25-100 steps, 2026-12-06)."""
    import hydra

    from ddpm.checkpoint import load_checkpoint
    from tests.helpers.paths import LEGACY

    module, cfg = load_checkpoint(LEGACY / "tiny.ckpt")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("validate")
    x0 = torch.stack([datamodule.val_set[i] for i in range(8)])
    model, _ = module.reverse_model(8)
    sampler = make_sampler(module.diffusion, "ddim", steps=50, eta=0.0)
    with module.evaluating():
        latents = ddim_invert(module.diffusion, model, x0, sampler.timesteps)
        back = sampler.sample(model, x0.shape, noise=latents)
    assert (latents - x0).abs().mean() > 0.5  # the latents are noise, not the images
    assert (back - x0).abs().max() < 0.01


def test_a_class_conditional_checkpoint_edits_with_its_class_and_guidance():
    """The edits run through the same guided network as sampling: a class-conditional module's reverse_model."""
    from ddpm.build import build_module
    from ddpm.config import compose_config

    module = build_module(
        compose_config(overrides=["condition=class", "model.num_classes=10", "logger=none"])
    )
    for p in module.ema.module.parameters():  # random weights: a network whose output depends on the class
        torch.nn.init.normal_(p, std=0.05)
    x0 = torch.rand(2, 1, 28, 28) * 2 - 1
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., :14] = 1
    sampler = make_sampler(module.diffusion, "ddim", steps=5)
    outs = []
    for label in (3, 7):
        model, _ = module.reverse_model(2, labels=torch.full((2,), label), guidance=2.0)
        with module.evaluating():
            outs.append(inpaint(sampler, model, x0, mask, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(outs[0][..., :14], x0[..., :14]) and torch.equal(outs[1][..., :14], x0[..., :14])
    assert (outs[0][..., 14:] - outs[1][..., 14:]).abs().max() > 1e-3  # the class steers the filled half
    with pytest.raises(ValueError, match="outside the model's classes"):
        module.reverse_model(2, labels=torch.tensor([3, 12]))
