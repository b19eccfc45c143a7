"""Progressive distillation: the student's timesteps, the rounds, and the target against two DDIM steps of the exact
Gaussian-data teacher computed here by hand (Bayes' rule for E[x_0 | x_t], the DDIM update written out)."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion import DDIMSampler, GaussianDiffusion, make_beta_schedule, space_timesteps
from ddpm.diffusion.distillation import halving_rounds, progressive_target, truncated_snr_weights
from ddpm.training.distillation import ProgressiveDistillation, student_sampler
from tests.helpers.oracles import gaussian_x0_mean
from tests.helpers.tiny import loader, tiny_unet, trainer


@pytest.mark.parametrize("T", [1000, 100, 37])
def test_a_student_grid_is_every_other_point_of_its_teachers(T):
    for n in (1, 2, 4, 8, 16):
        if 2 * n > T:
            continue
        student, teacher = space_timesteps(T, n, "trailing"), space_timesteps(T, 2 * n, "trailing")
        assert student == teacher[1::2], (T, n)
        assert student[-1] == T - 1 and len(set(student)) == n
        gaps = [b - a for a, b in zip([-1, *student], student, strict=False)]
        assert max(gaps) - min(gaps) <= 1  # evenly spaced: each step spans T / n timesteps, give or take one


def test_rounds_halve_down_to_the_student_and_refuse_what_halving_cannot_reach():
    assert halving_rounds(32, 4) == [16, 8, 4]
    assert halving_rounds(24, 3) == [12, 6, 3]
    assert halving_rounds(2, 1) == [1]
    for teacher, student in ((32, 3), (4, 4), (4, 8), (30, 4), (8, 0)):
        with pytest.raises(ValueError):
            halving_rounds(teacher, student)


def ddim_by_hand(z, ab_t, ab_s, mu, s):
    """One deterministic DDIM step of the exact teacher for x_0 ~ N(mu, s^2): x0 = E[x_0 | z] by Bayes' rule, then
    z_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) (z - sqrt(ab_t) x0) / sqrt(1 - ab_t)."""
    x0 = gaussian_x0_mean(ab_t, mu, s, z)
    return math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * (z - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_the_target_lands_where_two_exact_teacher_ddim_steps_land(n):
    """For each student step i of an n-step student: two teacher steps by hand from z at tau_i, then the one DDIM
    step of the student from z with the target as its x_0 must reach the same point; and the teacher steps equal the
    code's DDIM sampler over 2n trailing steps."""
    T, mu, s = 1000, 0.3, 0.5
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), objective="x0", clip_denoised=False)
    ab = [1.0, *diffusion.alphas_cumprod.tolist()]  # ab[j + 1] = alphabar at timestep j; ab[0]: the data
    teacher_grid = space_timesteps(T, 2 * n, "trailing")
    grid = [-1, *teacher_grid]

    def teacher(x, t):
        return gaussian_x0_mean(diffusion.alphas_cumprod[t].view(-1, 1, 1, 1).to(x.dtype), mu, s, x)

    g = torch.Generator().manual_seed(0)
    index = torch.arange(1, n + 1).repeat_interleave(3)
    z = torch.randn(len(index), 1, 4, 4, generator=g, dtype=torch.float64) * 1.3
    target = progressive_target(teacher, z, index, teacher_grid, diffusion.alphas_cumprod)

    for row, i in enumerate(index.tolist()):
        t, t_mid, t_end = grid[2 * i], grid[2 * i - 1], grid[2 * i - 2]
        z_mid = ddim_by_hand(z[row], ab[t + 1], ab[t_mid + 1], mu, s)
        z_end = ddim_by_hand(z_mid, ab[t_mid + 1], ab[t_end + 1], mu, s)
        a_t, s_t = math.sqrt(ab[t + 1]), math.sqrt(1 - ab[t + 1])
        a_e, s_e = math.sqrt(ab[t_end + 1]), math.sqrt(1 - ab[t_end + 1])
        one_step = a_e * target[row] + s_e * (z[row] - a_t * target[row]) / s_t
        torch.testing.assert_close(one_step, z_end, rtol=1e-9, atol=1e-9)

        # the same two steps through the code's DDIM sampler of the teacher (2n trailing steps)
        sampler = DDIMSampler(diffusion, steps=2 * n, spacing="trailing")
        x = z[row : row + 1]
        for j in (2 * i - 1, 2 * i - 2):  # the sampler's index j is timestep teacher_grid[j] = grid[j + 1]
            tt = torch.full((1,), sampler.timesteps[j], dtype=torch.long)
            x = sampler.step(teacher, x, j, tt, None)
        torch.testing.assert_close(x[0], z_end, rtol=1e-6, atol=1e-6)  # the sampler's x_0 is float32


def test_the_last_steps_target_is_the_teachers_final_prediction():
    """From tau_1 of a 1-step student (t = T - 1), two teacher steps end on the data: the target is that x_0."""
    T, mu, s = 100, -0.2, 0.4
    diffusion = GaussianDiffusion(make_beta_schedule("linear", T), objective="x0", clip_denoised=False)
    ab = diffusion.alphas_cumprod.tolist()

    def teacher(x, t):
        return gaussian_x0_mean(diffusion.alphas_cumprod[t].view(-1, 1, 1, 1).to(x.dtype), mu, s, x)

    z = torch.randn(4, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = progressive_target(
        teacher, z, torch.ones(4, dtype=torch.long), [49, 99], diffusion.alphas_cumprod
    )
    z_mid = ddim_by_hand(z, ab[99], ab[49], mu, s)
    torch.testing.assert_close(target, gaussian_x0_mean(ab[49], mu, s, z_mid), rtol=1e-9, atol=1e-9)


def test_truncated_snr_weights_are_the_snr_floored_at_one():
    alpha = torch.tensor([0.999, 0.8, 0.6, 0.1], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    expected = [0.999**2 / (1 - 0.999**2), 0.64 / 0.36, 1.0, 1.0]
    torch.testing.assert_close(truncated_snr_weights(alpha, sigma), torch.tensor(expected).double())


class RecordingUNet(torch.nn.Module):
    """The tiny UNet, recording the timesteps it is called at."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_unet()
        self.seen: set[int] = set()
        self.in_channels, self.image_size, self.num_classes = 1, 8, None

    def forward(self, x, t, *args):
        if self.training:
            self.seen.update(t.tolist())
        return self.inner(x, t, *args)


def distiller(steps_per_round: int, first_round_steps: int | None = None) -> ProgressiveDistillation:
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 100), objective="x0")
    return ProgressiveDistillation(
        RecordingUNet(),
        diffusion,
        teacher_steps=8,
        student_steps=2,
        steps_per_round=steps_per_round,
        first_round_steps=first_round_steps,
        lr=1e-3,
        warmup_steps=0,
        ema_decay=0.5,
    )


def test_each_round_trains_its_student_on_exactly_the_timesteps_it_samples_with():
    from ddpm.training.distillation import DistillationRounds

    module = distiller(steps_per_round=6)
    seen = []

    class Record(DistillationRounds):
        def finish_round(self, trainer, module):  # what the round trained on, then reset the record
            seen.append((module.steps, set(module.net.seen)))
            module.net.seen.clear()

    trainer(max_steps=12, callbacks=[Record("unused", "unused")]).fit(module, loader(n=64))
    assert [steps for steps, _ in seen] == [4, 2]
    for steps, timesteps in seen:
        sampler = DDIMSampler(
            module.diffusion, **{k: v for k, v in student_sampler(steps).items() if k != "name"}
        )
        assert timesteps <= set(sampler.timesteps), (steps, timesteps, sampler.timesteps)
        assert len(sampler.timesteps) == steps


def test_a_round_starts_from_the_last_students_average_and_makes_it_the_teacher():
    module = distiller(steps_per_round=4)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(1.0)
    module.start_round(1)
    for name, p in module.ema.module.state_dict().items():
        torch.testing.assert_close(module.teacher.state_dict()[name], p)
        torch.testing.assert_close(module.net.state_dict()[name], p)
    assert module.steps == 2
    assert not any(
        k.startswith("teacher") for k in module.state_dict()
    )  # a student checkpoint is an ordinary one


def test_a_longer_first_round_ends_where_it_is_told_and_each_round_restarts_the_rate():
    from ddpm.training.distillation import DistillationRounds

    module = distiller(steps_per_round=3, first_round_steps=7)
    module.hparams.lr_decay = "linear"
    ends, rates = [], []

    class Record(DistillationRounds):
        def finish_round(self, trainer, module):
            ends.append((module.steps, trainer.global_step))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            super().on_train_batch_start(trainer, module, batch, batch_idx)
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer(max_steps=module.total_steps, callbacks=[Record("unused", "unused")]).fit(module, loader(n=160))
    assert module.total_steps == 10
    assert ends == [(4, 7), (2, 10)]
    # linear decay to 0 within each round: 7 steps from 1e-3, then 3 steps from 1e-3 again
    expected = [1e-3 * (1 - i / 7) for i in range(7)] + [1e-3 * (1 - i / 3) for i in range(3)]
    assert rates == pytest.approx(expected)
