"""Progressive distillation as a LightningModule: rounds of a student learning to take one DDIM step where its teacher
(the previous round's student) takes two, with one round of distribution matching for the student of `matching_at`
steps; and the callback that ends each round (checkpoint, grid, next teacher).

The math is `ddpm.diffusion.distillation` and `ddpm.diffusion.distribution_matching`; this file is their training
loop: which step, which noise, which weights.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from ddpm.diffusion import GaussianDiffusion, Recipe, make_sampler
from ddpm.diffusion.distillation import (
    alpha_sigma,
    ddim_step,
    halving_rounds,
    progressive_target,
    truncated_snr_weights,
)
from ddpm.diffusion.distribution_matching import matching_gradient, matching_loss, noised_copy_timesteps
from ddpm.diffusion.guidance import ClassConditioned, drop_labels
from ddpm.diffusion.likelihood import mean_flat
from ddpm.diffusion.samplers import trailing_timesteps
from ddpm.images import save_grid
from ddpm.training.module import DiffusionModule, lr_at
from ddpm.training.sample_grid import log_grid

log = logging.getLogger(__name__)

# Adam's betas in the matching round, for the student and the fake score (DMD2's): no momentum, a short memory of
# gradient scale, for two networks that chase each other
MATCHING_BETAS = (0.0, 0.99)


def round_lengths(rounds: int, steps_per_round: int, first_round_steps: int | None = None) -> list[int]:
    """The optimizer steps of each round: `first_round_steps` (default `steps_per_round`) for the first, whose student
    every later one inherits its errors from, and `steps_per_round` for each later round."""
    first = steps_per_round if first_round_steps is None else first_round_steps
    return [first] + [steps_per_round] * (rounds - 1)


def round_plan(
    teacher_steps: int,
    student_steps: int,
    steps_per_round: int,
    first_round_steps: int | None = None,
    matching_steps: int = 0,
    matching_at: int | None = None,
) -> tuple[list[int], list[int], int | None]:
    """(the student's steps in each round, each round's optimizer steps, the index of the matching round or None).

    The halving rounds teacher_steps -> ... -> student_steps (`halving_rounds`, `round_lengths`); with matching_steps
    > 0, a round of distribution matching of `matching_steps` follows the round whose student takes `matching_at`
    steps, and the rounds after it halve the matched student. ValueError when matching_at is no round's student."""
    rounds = halving_rounds(teacher_steps, student_steps)
    lengths = round_lengths(len(rounds), steps_per_round, first_round_steps)
    if matching_steps <= 0:
        return rounds, lengths, None
    if matching_at not in rounds:
        raise ValueError(
            f"matching_at={matching_at} is not the step count of a student of these rounds ({rounds})"
        )
    r = rounds.index(matching_at) + 1
    return rounds[:r] + [matching_at] + rounds[r:], lengths[:r] + [matching_steps] + lengths[r:], r


def student_sampler(steps: int) -> dict[str, Any]:
    """The sampler node of a student of `steps` steps: deterministic DDIM on the timesteps it was distilled on."""
    return {"name": "ddim", "steps": steps, "eta": 0.0, "spacing": "trailing", "compile": False}


class ProgressiveDistillation(DiffusionModule):
    """A student network (`net`, initialised by the caller from the teacher's EMA weights, see `start_from`) distilled
    in rounds: round r trains a student of `rounds[r]` steps on the targets of its teacher at twice as many
    (`progressive_target`), for `steps_per_round` optimizer steps (`first_round_steps` in the first), with the learning
    rate warmed up and decayed within each round. At the start of each later round the student's EMA weights become
    the teacher and the start of the next student (`start_round`, called by `DistillationRounds`).

    The matching round (`round_plan`) trains the same student by distribution matching instead
    (`ddpm.diffusion.distribution_matching`): toward the distribution of the first teacher (`score`, frozen), away from
    that of a fake score (`fake`, a copy of the first teacher trained on the student's outputs in the same optimizer
    step, in its own parameter group), at matching_lr after the warm-up, with Adam's betas (0, 0.99) (DMD2's) and
    fresh moments for the student.

    Args (beyond DiffusionModule's):
        teacher_steps: the DDIM steps of the first teacher.
        student_steps: the steps of the last round's student (teacher_steps / 2^k).
        steps_per_round: optimizer steps of each round after the first.
        first_round_steps: optimizer steps of the first round (None: steps_per_round).
        matching_steps: optimizer steps of the matching round (0: none).
        matching_at: the steps of the student that is matched.
        matching_lr, fake_lr: the student's and the fake score's learning rates in the matching round.
        teacher_guidance: a class-conditional teacher's guidance scale w, folded into the student: its targets for
            labelled images are those of the guided teacher, so the student samples at guidance 0 what the teacher
            drew at w (the null class keeps the unguided teacher's targets).
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        recipe: Recipe | None = None,
        *,
        teacher_steps: int,
        student_steps: int,
        steps_per_round: int,
        first_round_steps: int | None = None,
        matching_steps: int = 0,
        matching_at: int | None = None,
        matching_lr: float = 2e-5,
        fake_lr: float = 1e-4,
        teacher_guidance: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, diffusion, recipe, **kwargs)
        if steps_per_round < 1 or (first_round_steps is not None and first_round_steps < 1):
            raise ValueError(f"rounds need at least 1 step, got {steps_per_round} and {first_round_steps}")
        if teacher_steps > diffusion.num_timesteps:
            raise ValueError(
                f"the teacher cannot take {teacher_steps} steps on a chain of T={diffusion.num_timesteps} timesteps"
            )
        self.rounds, lengths, self.matching_round = round_plan(
            teacher_steps, student_steps, steps_per_round, first_round_steps, matching_steps, matching_at
        )
        self.round_ends = list(itertools.accumulate(lengths))
        self.matching_lr, self.fake_lr = matching_lr, fake_lr
        self.teacher_guidance = teacher_guidance
        self.round = 0
        # frozen, and kept out of the module tree: neither in state_dict (a student checkpoint is an ordinary one)
        # nor in DDP's parameters; saved under its own checkpoint key for resuming (on_save_checkpoint)
        self.__dict__["teacher"] = copy.deepcopy(net).requires_grad_(False).eval()
        # with a matching round, the first teacher (frozen) and the fake score (trained), likewise
        if self.matching_round is not None:
            self.__dict__["score"] = copy.deepcopy(net).requires_grad_(False).eval()
            self.__dict__["fake"] = copy.deepcopy(net).requires_grad_(True).train()

    # ------------------------------------------------------------------ rounds
    @property
    def total_steps(self) -> int:
        return self.round_ends[-1]

    @property
    def steps(self) -> int:
        """The step count of the student this round trains."""
        return self.rounds[self.round]

    def round_at(self, step: int) -> int:
        return min(bisect.bisect_right(self.round_ends, step), len(self.rounds) - 1)

    def round_span(self, r: int) -> tuple[int, int]:
        """The first step of round r and the step after its last."""
        return (self.round_ends[r - 1] if r else 0), self.round_ends[r]

    @property
    def matching(self) -> bool:
        """Whether this round is the matching round."""
        return self.round == self.matching_round

    def start_from(self, weights: dict[str, Tensor]) -> None:
        """Teacher, student, the student's EMA (and the score and fake score) all start from `weights` (the teacher's
        EMA network)."""
        for net in (self.teacher, self.net, self.ema.module, *self._matching_nets()):
            net.load_state_dict(weights)

    def _matching_nets(self) -> tuple[nn.Module, ...]:
        return () if self.matching_round is None else (self.score, self.fake)

    @torch.no_grad()
    def start_round(self, r: int) -> None:
        """Round r: the last student's EMA weights become the new student (whose average goes on) and, in a halving
        round, its teacher; the matching round starts the fake score from the first teacher."""
        was_matching = self.matching
        weights = self.ema.module.state_dict()
        self.net.load_state_dict(weights)
        self.round = r
        if self.matching:
            self.fake.load_state_dict(self.score.state_dict())
        else:
            self.teacher.load_state_dict(weights)
        if self.matching or was_matching:
            self._restart_student_moments()

    def _restart_student_moments(self) -> None:
        """Fresh Adam moments for the student, with this round's betas: its gradients change kind between rounds."""
        if self._trainer is None or not self.trainer.optimizers:
            return
        optimizer = self.trainer.optimizers[0]
        group = optimizer.param_groups[0]
        group["betas"] = MATCHING_BETAS if self.matching else tuple(self.hparams.adam_betas)
        for p in group["params"]:
            optimizer.state.pop(p, None)

    def on_fit_start(self) -> None:
        for net in (self.teacher, *self._matching_nets()):
            net.to(self.device)

    def _teacher_on(self, device: torch.device) -> nn.Module:
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        return self.teacher

    # ------------------------------------------------------------------ the loss
    def distillation_loss(self, net: nn.Module, batch: Any, g: torch.Generator, drop: bool) -> Tensor:
        """E_i,eps[max(SNR_t, 1) ||xtilde - xhat_student(z_t)||^2], t = tau_i of this round's student, i uniform in
        1..N, z_t = q_sample(x_0, t, eps), xtilde from two teacher DDIM steps (`progressive_target`)."""
        x0 = self._images(batch)
        n = self.steps
        grid = torch.tensor(trailing_timesteps(self.diffusion.num_timesteps, n), device=x0.device)
        index = torch.randint(1, n + 1, (x0.shape[0],), device=x0.device, generator=g)
        t = grid[index - 1]
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=g)
        z = self.diffusion.q_sample(x0, t, noise)
        labels = None
        if self.num_classes is not None:
            self._network_of(net, batch)  # refuses batches without labels in one sentence
            labels = batch[1]
            if drop:
                labels = drop_labels(labels, self.hparams.p_uncond, self.num_classes, g)
        teacher = self._teacher_on(x0.device)
        teacher_model = (
            teacher
            if labels is None
            else ClassConditioned(teacher, labels, self.num_classes, self.teacher_guidance)
        )
        with torch.no_grad():
            target = progressive_target(
                lambda x, s: self.diffusion.data_prediction(x, s, teacher_model(x, s)),
                z,
                index,
                trailing_timesteps(self.diffusion.num_timesteps, 2 * n),
                self.diffusion.alphas_cumprod,
            )
        out = net(z, t) if labels is None else net(z, t, labels)
        x0_hat = self.diffusion.predict_x0_and_eps(z, t, out, clip_denoised=False)[0]
        weights = truncated_snr_weights(*alpha_sigma(self.diffusion.alphas_cumprod, t)).to(x0.dtype)
        return (weights * mean_flat((x0_hat - target) ** 2)).mean()

    def matching_losses(self, net: nn.Module, batch: Any, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """(the student's distribution-matching loss, the fake score's denoising loss) on one batch of the student's
        samples: its chain from z_T ~ N(0, I) run without gradient to a step k uniform in 0..N-1, then its x_0
        prediction x there, whose noised copy x_s (s in DMD's range) the score and the fake score denoise
        (`matching_gradient`); the fake score learns x (detached) with the recipe's loss. The batch's images only
        give the shape and the labels."""
        x0 = self._images(batch)
        diffusion, n = self.diffusion, self.steps
        device, shape, ac = x0.device, x0.shape, self.diffusion.alphas_cumprod
        grid = trailing_timesteps(diffusion.num_timesteps, n)[::-1]  # descending: T - 1 first
        k = int(torch.randint(0, n, (), device=device, generator=g))
        labels = None
        if self.num_classes is not None:
            self._network_of(net, batch)  # refuses batches without labels in one sentence
            labels = drop_labels(batch[1], self.hparams.p_uncond, self.num_classes, g)
        student, fake_model = (self._network_of(m, batch, labels) for m in (net, self.fake))
        score = (
            self.score
            if labels is None
            else ClassConditioned(self.score, labels, self.num_classes, self.teacher_guidance)
        )

        def at(t: int) -> Tensor:
            return torch.full((shape[0],), t, device=device, dtype=torch.long)

        z = torch.randn(shape, device=device, dtype=x0.dtype, generator=g)
        with torch.no_grad():
            for t, s in zip(grid[:k], grid[1 : k + 1], strict=True):
                xhat = diffusion.data_prediction(z, at(t), student(z, at(t)))
                z = ddim_step(z, xhat, *alpha_sigma(ac, at(t)), *alpha_sigma(ac, at(s))).to(z.dtype)
        t_k = at(grid[k])
        x = diffusion.predict_x0_and_eps(z, t_k, student(z, t_k), clip_denoised=False)[0]
        sample = x.detach().clamp(-1.0, 1.0)
        with torch.no_grad():
            s = noised_copy_timesteps(shape[0], diffusion.num_timesteps, device, g)
            x_s = diffusion.q_sample(
                sample, s, torch.randn(shape, device=device, dtype=x0.dtype, generator=g)
            )
            real = diffusion.predict_x0_and_eps(x_s, s, score(x_s, s), False)[0]
            fake = diffusion.predict_x0_and_eps(x_s, s, fake_model(x_s, s), False)[0]
            gradient = matching_gradient(sample, real, fake)
        t = self.recipe.sample_timesteps(shape[0], device, g)
        noise = torch.randn(shape, device=device, dtype=x0.dtype, generator=g)
        return matching_loss(x, gradient).mean(), self.recipe.losses(fake_model, sample, t, noise).mean()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.round != self.round_at(self.global_step):
            raise RuntimeError(
                f"step {self.global_step} belongs to round {self.round_at(self.global_step)}, the module is in round "
                f"{self.round}: train with the DistillationRounds callback, which starts each round"
            )
        x0 = self._images(batch)
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        g = self.noise_generator(x0.device, batch_idx % accumulate)
        if self.matching:
            student_loss, fake_loss = self.matching_losses(self.train_net, batch, g)
            # their gradients reach disjoint parameters (the student's, the fake score's): one optimizer step for both
            loss = student_loss + fake_loss
            self.log("distill/matching_loss", student_loss)
            self.log("distill/fake_score_loss", fake_loss)
        else:
            loss = self.distillation_loss(self.train_net, batch, g, drop=True)
        self.loss_check.submit(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        self.log("distill/student_steps", float(self.steps))
        return loss

    def on_after_backward(self) -> None:
        """Under DDP the fake score, outside the module tree, averages its gradients over the processes itself."""
        if self.matching and self.trainer.world_size > 1:
            for p in self.fake.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.trainer.world_size

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The distillation loss of the EMA student on held-out images, noise fixed per batch (in the matching round:
        its distribution-matching loss, the fake score as it stands)."""
        x0 = self._images(batch)
        g = torch.Generator(device=x0.device).manual_seed(1000 + batch_idx)
        if self.matching:
            loss = self.matching_losses(self.ema.module, batch, g)[0]
        else:
            loss = self.distillation_loss(self.ema.module, batch, g, drop=False)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW; in each halving round a warm-up over warmup_steps and the decay (lr_decay) to final_lr_ratio at its
        end; in the matching round the warm-up to matching_lr (the student) and fake_lr (the fake score's parameter
        group, idle in the other rounds), then constant."""
        config = super().configure_optimizers()
        hp = self.hparams

        def student_factor(step: int) -> float:
            r = self.round_at(step)
            start, end = self.round_span(r)
            within = step - start
            if r == self.matching_round:
                return lr_at(within, 1.0, hp.warmup_steps) * self.matching_lr / hp.lr
            return lr_at(within, 1.0, hp.warmup_steps, hp.lr_decay, within / (end - start), hp.final_lr_ratio)

        def fake_factor(step: int) -> float:
            r = self.round_at(step)
            if r != self.matching_round:
                return 0.0
            return lr_at(step - self.round_span(r)[0], 1.0, hp.warmup_steps) * self.fake_lr / hp.lr

        optimizer = config["optimizer"]
        factors = [student_factor]
        if self.matching_round is not None:
            optimizer.add_param_group({"params": list(self.fake.parameters()), "betas": MATCHING_BETAS})
            factors.append(fake_factor)
        config["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return config

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The teacher and the round, for resuming; and the run config as the weights sample: distill.steps and the
        sampler node of this round's student (what sample.py and evaluate.py use by default)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["distillation"] = {"round": self.round, "teacher": self.teacher.state_dict()}
        if self.matching_round is not None:
            checkpoint["distillation"]["fake"] = self.fake.state_dict()
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        config = copy.deepcopy(hparams.get("config") or {})
        config.setdefault("distill", {})["steps"] = self.steps
        config["sampler"] = student_sampler(self.steps)
        checkpoint["hyper_parameters"] = {**hparams, "config": config}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("distillation")
        if state is None:
            raise ValueError("this checkpoint holds no distillation state: it was not written by distill.py")
        self.teacher.load_state_dict(state["teacher"])
        if self.matching_round is not None:
            self.fake.load_state_dict(state["fake"])
        self.round = int(state["round"])


class DistillationRounds(L.Callback):
    """Ends each round of a `ProgressiveDistillation`: writes `<dirpath>/student_<N>steps.ckpt` and a grid of the
    N-step student (`<samples>/student_<N>steps.png`, to W&B as distill/samples), then starts the next round."""

    def __init__(self, dirpath: str, samples_dirpath: str, n: int = 64, seed: int = 0) -> None:
        self.dirpath, self.samples_dirpath, self.n, self.seed = Path(dirpath), Path(samples_dirpath), n, seed

    def on_train_start(self, trainer: L.Trainer, pl_module: ProgressiveDistillation) -> None:
        self._announce(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: ProgressiveDistillation, batch: Any, batch_idx: int
    ) -> None:
        r = pl_module.round_at(trainer.global_step)
        if r != pl_module.round:
            self.finish_round(trainer, pl_module)
            pl_module.start_round(r)
            self._announce(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: ProgressiveDistillation) -> None:
        if trainer.global_step >= pl_module.total_steps:
            self.finish_round(trainer, pl_module)

    def _announce(self, module: ProgressiveDistillation) -> None:
        if module.global_rank != 0:
            return
        what = (
            "the %d-step student matched to the distribution of the first teacher"
            if module.matching
            else f"a %d-step student of the {2 * module.steps}-step teacher"
        )
        log.info(
            f"round %d of %d: {what} (steps %d-%d)",
            module.round + 1,
            len(module.rounds),
            module.steps,
            *module.round_span(module.round),
        )

    def finish_round(self, trainer: L.Trainer, module: ProgressiveDistillation) -> None:
        path = self.dirpath / f"student_{module.steps}steps.ckpt"
        trainer.save_checkpoint(path)
        grid = self.grid(trainer, module)
        if module.global_rank == 0:
            log.info(
                "round %d done at step %d: the %d-step student is %s (grid %s)",
                module.round + 1,
                trainer.global_step,
                module.steps,
                path,
                grid,
            )

    @rank_zero_only
    def grid(self, trainer: L.Trainer, module: ProgressiveDistillation) -> Path:
        sampler = make_sampler(module.diffusion, **student_sampler(module.steps))
        generator = torch.Generator(device=module.device).manual_seed(self.seed)
        images = module.sample(sampler, self.n, generator=generator)
        path = save_grid(images, self.samples_dirpath / f"student_{module.steps}steps.png")
        log_grid(trainer, "distill/samples", path, f"{module.steps}-step student, step {trainer.global_step}")
        return path


__all__ = ["DistillationRounds", "ProgressiveDistillation", "round_lengths", "round_plan", "student_sampler"]
