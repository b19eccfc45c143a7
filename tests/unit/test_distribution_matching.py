"""Distribution matching: the DMD gradient moves a generator's distribution onto the teacher's (checked on Gaussian
data, where both denoisers are Bayes' rule in closed form), and the matching round of `ProgressiveDistillation`:
where it sits, what it trains, at which rates."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, make_beta_schedule
from ddpm.diffusion.distribution_matching import matching_gradient, matching_loss, noised_copy_timesteps
from ddpm.training.distillation import MATCHING_BETAS, DistillationRounds, ProgressiveDistillation, round_plan
from tests.helpers.tiny import loader, tiny_unet, trainer


def bayes_x0(x_t, alpha, sigma, mean, std):
    """E[x_0 | x_t] for x_0 ~ N(mean, std^2 I) and x_t = alpha x_0 + sigma eps: mean + alpha std^2 / (alpha^2 std^2 +
    sigma^2) (x_t - alpha mean)."""
    return mean + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x_t - alpha * mean)


def test_the_matching_gradient_moves_a_gaussian_generator_onto_the_teachers_gaussian():
    """x = m + s z with the fake denoiser exact for N(m, s^2) and the real one for N(0.5, 0.3^2): descending the
    matching loss brings (m, s) to (0.5, 0.3). A flipped sign or a swapped pair drives them away."""
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 1000), objective="x0")
    real_mean, real_std = 0.5, 0.3
    m = torch.full((16,), -0.4, requires_grad=True)
    log_s = torch.tensor(0.8).log().requires_grad_(True)
    optimizer = torch.optim.Adam([m, log_s], lr=0.02)
    for _ in range(400):
        s = log_s.exp()
        x = m + s * torch.randn(256, 16)
        t = noised_copy_timesteps(256, 1000, x.device)
        ab = diffusion.alphas_cumprod[t].float().unsqueeze(1)
        alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
        x_t = alpha * x.detach() + sigma * torch.randn_like(x)
        real = bayes_x0(x_t, alpha, sigma, real_mean, real_std)
        fake = bayes_x0(x_t, alpha, sigma, m.detach(), s.detach())
        loss = matching_loss(x, matching_gradient(x.detach(), real, fake)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert m.detach() == pytest.approx(torch.full((16,), real_mean), abs=0.05)
    assert log_s.exp().item() == pytest.approx(real_std, abs=0.03)


def test_the_matching_loss_has_the_matching_gradient_per_pixel():
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    g = torch.randn(3, 1, 4, 4)
    matching_loss(x, g).sum().backward()
    torch.testing.assert_close(x.grad, g / 16)
    # and the gradient is normalised per image by mean |x - real|
    real, fake = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    x = torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), -0.5)])
    torch.testing.assert_close(matching_gradient(x, real, fake)[:, 0, 0, 0], torch.tensor([0.5, 2.0]))


def test_noised_copies_stay_inside_dmds_range():
    t = noised_copy_timesteps(10_000, 1000, torch.device("cpu"))
    assert t.min() >= 20 and t.max() < 980 and t.min() < 25 and t.max() > 975


def test_the_matching_round_follows_the_round_of_its_student():
    assert round_plan(8, 1, 400, 1600) == ([4, 2, 1], [1600, 400, 400], None)
    assert round_plan(8, 1, 400, 1600, 300, 4) == ([4, 4, 2, 1], [1600, 300, 400, 400], 1)
    assert round_plan(8, 1, 400, None, 300, 1) == ([4, 2, 1, 1], [400, 400, 400, 300], 3)
    with pytest.raises(ValueError, match="matching_at=3 is not the step count of a student"):
        round_plan(8, 1, 400, None, 300, 3)


def matcher() -> ProgressiveDistillation:
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 100), objective="x0")
    module = ProgressiveDistillation(
        tiny_unet(),
        diffusion,
        teacher_steps=8,
        student_steps=2,
        steps_per_round=3,
        matching_steps=3,
        matching_at=4,
        matching_lr=2e-4,
        fake_lr=5e-4,
        lr=1e-3,
        warmup_steps=0,
        ema_decay=0.5,
    )
    module.hparams.lr_decay = "constant"
    module.start_from(module.net.state_dict())
    return module


def test_the_matching_round_trains_the_student_and_the_fake_score_at_their_own_rates():
    module = matcher()
    assert module.rounds == [4, 4, 2] and module.matching_round == 1
    score_before = {k: v.clone() for k, v in module.score.state_dict().items()}
    seen, fakes = [], {}

    class Record(DistillationRounds):
        def finish_round(self, trainer, module):
            fakes[module.round] = {k: v.clone() for k, v in module.fake.state_dict().items()}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            super().on_train_batch_start(trainer, module, batch, batch_idx)
            student, fake = trainer.optimizers[0].param_groups
            seen.append((module.round, student["lr"], fake["lr"], tuple(student["betas"])))

    trainer(max_steps=module.total_steps, callbacks=[Record("unused", "unused")]).fit(module, loader(n=80))
    adam = (0.9, 0.999)
    assert seen == [
        *[(0, pytest.approx(1e-3), 0.0, adam)] * 3,
        *[(1, pytest.approx(2e-4), pytest.approx(5e-4), MATCHING_BETAS)] * 3,
        *[(2, pytest.approx(1e-3), 0.0, adam)] * 3,
    ]
    # the fake score is the first teacher until the matching round, which trains it; the score never moves
    for k, v in score_before.items():
        torch.testing.assert_close(fakes[0][k], v)
        torch.testing.assert_close(module.score.state_dict()[k], v)
    assert any(not torch.equal(fakes[1][k], v) for k, v in score_before.items())
    assert not any(k.startswith(("score", "fake")) for k in module.state_dict())


def test_a_checkpoint_in_the_matching_round_keeps_the_fake_score(tmp_path):
    module = matcher()
    module.start_round(1)
    with torch.no_grad():
        for p in module.fake.parameters():
            p.add_(0.25)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"config": {}}}
    module.on_save_checkpoint(checkpoint)
    other = matcher()
    other.on_load_checkpoint(checkpoint)
    assert other.round == 1 and other.matching
    for k, v in module.fake.state_dict().items():
        torch.testing.assert_close(other.fake.state_dict()[k], v)
