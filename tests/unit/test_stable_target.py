"""The stable target field (Xu et al. 2023): the training target is x_0's posterior mean when x_0 is uniform over
a reference set, checked against Bayes' rule written with Gaussian densities, its two limits, and the loss."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from ddpm.diffusion import GaussianDiffusion, StableTargetField, make_beta_schedule
from ddpm.diffusion.recipe import stable_target

torch.manual_seed(0)
BETAS = make_beta_schedule("linear", 1000)


def bayes_posterior_mean(x_t: torch.Tensor, alphabar: float, reference: torch.Tensor) -> torch.Tensor:
    """E[x_0 | x_t] for x_0 uniform over the reference rows, by Bayes' rule: p(r_j | x_t) proportional to
    prod_i N(x_t,i; sqrt(alphabar) r_j,i, 1 - alphabar)."""
    ref = reference.flatten(1).double()
    log_lik = Normal(alphabar**0.5 * ref, (1 - alphabar) ** 0.5).log_prob(x_t.flatten().double()).sum(1)
    posterior = (log_lik - log_lik.logsumexp(0)).exp()
    return (posterior[:, None] * ref).sum(0).view_as(x_t)


@pytest.mark.parametrize("t", [150, 300, 450, 600])
def test_target_is_the_posterior_mean_by_bayes_rule(t):
    d = GaussianDiffusion(BETAS)
    reference = torch.rand(12, 1, 6, 6) * 2 - 1
    x0 = reference[[3, 7]]
    x_t = d.q_sample(x0, torch.full((2,), t), torch.randn_like(x0))
    target = stable_target(x_t, d.sqrt_alphas_cumprod[torch.full((2,), t)], reference)
    for i in range(2):
        expected = bayes_posterior_mean(x_t[i], d.alphas_cumprod[t].item(), reference).float()
        torch.testing.assert_close(target[i], expected, atol=1e-5, rtol=1e-5)
    # a level where the posterior is neither collapsed nor flat, so the check is not trivially x_0 or the mean
    if t == 450:
        assert (target - x0).abs().max() > 1e-3 and (target - reference.mean(0)).abs().max() > 1e-3


def test_limits_low_noise_gives_x0_and_pure_noise_gives_the_reference_mean():
    d = GaussianDiffusion(BETAS)
    reference = torch.rand(64, 1, 8, 8) * 2 - 1
    x0 = reference[:4]
    for t, expected in ((0, x0), (999, reference.mean(0, keepdim=True).expand_as(x0))):
        steps = torch.full((4,), t)
        x_t = d.q_sample(x0, steps, torch.randn_like(x0))
        target = stable_target(x_t, d.sqrt_alphas_cumprod[steps], reference)
        torch.testing.assert_close(target, expected, atol=0.02 if t else 1e-6, rtol=0)


@pytest.mark.parametrize("objective", ["x0", "eps", "v"])
def test_loss_trains_on_the_posterior_mean_and_the_noise_it_implies(objective):
    d = GaussianDiffusion(BETAS, objective=objective)
    reference = torch.rand(10, 1, 5, 5) * 2 - 1
    x0, t, noise = reference[:2], torch.tensor([400, 450]), torch.randn(2, 1, 5, 5)
    x_t = d.q_sample(x0, t, noise)
    zero = lambda x, _t: torch.zeros_like(x)  # noqa: E731  the loss is then the squared target
    field = StableTargetField(len(reference))
    field.target(reference[2:])
    loss = d.training_losses(zero, x0, t, noise, x0_target=field.target(x0))  # x0 joins the reference images
    for i in range(2):
        ab = d.alphas_cumprod[t[i]].item()
        m = bayes_posterior_mean(x_t[i], ab, reference).float()
        e = (x_t[i] - ab**0.5 * m) / (1 - ab) ** 0.5
        target = {"x0": m, "eps": e, "v": ab**0.5 * e - (1 - ab) ** 0.5 * m}[objective]
        torch.testing.assert_close(loss[i], target.square().mean(), rtol=1e-4, atol=1e-6)
    plain = d.training_losses(zero, x0, t, noise)  # no reference: L_simple's own target
    torch.testing.assert_close(plain, d.training_target(x0, t, noise).square().flatten(1).mean(1))


def test_negative_reference_size_is_refused():
    with pytest.raises(ValueError, match="stf_reference must be >= 0"):
        StableTargetField(-1)


def test_the_field_keeps_the_batch_then_the_most_recent_images():
    field = StableTargetField(10)
    for k in range(3):
        field.target(torch.full((4, 1, 28, 28), float(k)))
        assert field.images.shape[0] == min(4 * (k + 1), 10)
    assert field.images[:, 0, 0, 0].tolist() == [2.0] * 4 + [1.0] * 4 + [0.0] * 2
    restored = StableTargetField(10)
    restored.load_state_dict(field.state_dict())
    assert torch.equal(restored.images, field.images) and restored.labels is None
    assert (
        StableTargetField(0).target(torch.zeros(4, 1, 28, 28)) is None and StableTargetField(0).images is None
    )


def test_the_module_owns_the_field_the_recipe_sizes():
    from ddpm.build import build_module
    from ddpm.config import compose_config

    assert build_module(compose_config(overrides=["recipe.stf_reference=10"])).stable_target.size == 10
    assert build_module(compose_config(overrides=["recipe=paper"])).stable_target.size == 0


def test_validation_neither_feeds_the_reference_nor_uses_it():
    """Held-out images must never become training targets, and the held-out loss stays L_simple (comparable across
    runs with and without the stable target)."""
    from ddpm.build import build_module
    from ddpm.config import compose_config

    module = build_module(compose_config(overrides=["recipe.stf_reference=10"]))
    plain = build_module(compose_config(overrides=["recipe.stf_reference=0"]))
    plain.load_state_dict(module.state_dict())
    train_batch = torch.rand(4, 1, 28, 28) * 2 - 1
    module.stable_target.target(train_batch)
    held_out = torch.rand(6, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        loss, plain_loss = module.validation_step(held_out, 0), plain.validation_step(held_out, 0)
    assert torch.equal(module.stable_target.images, train_batch)
    assert torch.equal(loss, plain_loss)


def test_a_conditional_target_is_the_posterior_over_its_own_class():
    d = GaussianDiffusion(BETAS)
    reference = torch.rand(12, 1, 6, 6) * 2 - 1
    labels = torch.arange(12) % 3
    x0 = reference[[4, 5]]  # classes 1 and 2
    t = torch.full((2,), 500)
    x_t = d.q_sample(x0, t, torch.randn_like(x0))
    allowed = labels[None, :] == labels[[4, 5], None]
    target = stable_target(x_t, d.sqrt_alphas_cumprod[t], reference, allowed)
    for i, c in enumerate((1, 2)):
        expected = bayes_posterior_mean(x_t[i], d.alphas_cumprod[500].item(), reference[labels == c]).float()
        torch.testing.assert_close(target[i], expected, atol=1e-5, rtol=1e-5)


def test_a_conditional_field_allows_the_class_conditioned_on_and_all_for_the_null_class():
    d = GaussianDiffusion(BETAS)
    k = 10  # the null class
    field = StableTargetField(6)
    first = torch.rand(3, 1, 6, 6) * 2 - 1
    field.target(first, torch.tensor([0, 1, 2]))
    x0, y = torch.rand(3, 1, 6, 6) * 2 - 1, torch.tensor([1, 1, 0])
    conditioned_on = torch.tensor([1, k, 0])  # the second label dropped
    target = field.target(x0, y, conditioned_on, null_class=k)
    reference, ref_labels = torch.cat([x0, first]), torch.tensor([1, 1, 0, 0, 1, 2])
    assert torch.equal(field.images, reference) and torch.equal(field.labels, ref_labels)
    t = torch.full((3,), 450)
    x_t = d.q_sample(x0, t, torch.randn_like(x0))
    got = target(x_t, d.sqrt_alphas_cumprod[t])
    ab = d.alphas_cumprod[450].item()
    for i, allowed in enumerate((ref_labels == 1, torch.ones(6, dtype=torch.bool), ref_labels == 0)):
        expected = bayes_posterior_mean(x_t[i], ab, reference[allowed]).float()
        torch.testing.assert_close(got[i], expected, atol=1e-5, rtol=1e-5)


def test_a_conditional_module_trains_on_it():
    from ddpm.build import build_module
    from ddpm.config import compose_config

    module = build_module(
        compose_config(overrides=["condition=class", "recipe.stf_reference=6", "model.num_classes=10"])
    )
    module.hparams.noise_seed = 1
    loss = module.training_step((torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([3, 3, 7, 9])), 0)
    assert torch.isfinite(loss)
    assert module.stable_target.labels.tolist() == [3, 3, 7, 9]
