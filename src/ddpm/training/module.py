"""The LightningModule: forward noising and the loss in training_step, EMA weights for evaluation and sampling."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import Tensor, nn

from ddpm.diffusion import GaussianDiffusion, Progress, Recipe, Sampler, StableTargetField
from ddpm.diffusion.guidance import ClassConditioned, drop_labels, spread_labels
from ddpm.diffusion.self_conditioning import SelfConditioned
from ddpm.training.ema import EMA, ema_decay_at
from ddpm.training.finite_loss import FiniteLossCheck, NonFiniteLossError


class DiffusionModule(L.LightningModule):
    """Trains eps_theta (or an x0 / v predictor) with the simple loss of Ho et al.

    Args:
        net: the network, called as net(x_t, t).
        diffusion: the GaussianDiffusion (schedule, objective, reverse variance).
        recipe: how training draws t, weighs the loss and picks its target (default: Ho et al.'s, see `Recipe`); the
            module owns the stable target field's reference images (`StableTargetField`, saved in checkpoints).
        lr, weight_decay, adam_betas, eps: AdamW settings (weight_decay=0 is Adam).
        warmup_steps: linear learning-rate warm-up from 0 to lr over this many optimizer steps.
        lr_decay: after the warm-up, `constant`, or `cosine` / `linear` decay to `final_lr_ratio` * lr at the end of
            training: of trainer.max_steps or of trainer.max_time, whichever ends first (see `training_progress`).
        final_lr_ratio: the learning rate at the end of a decay, as a fraction of lr.
        ema_decay, ema_warmup: see `EMA`.
        config: the resolved run configuration, stored in every checkpoint and logged as hyperparameters.
        noise_seed: seeds the training noise: t and eps of each batch come from a generator seeded with
            `noise_key(noise_seed, rank, global step, micro-batch)`, so every DDP rank draws its own noise
            (seed_everything gives all ranks the same global RNG) and a resumed run draws exactly the noise an
            uninterrupted one would.
        compile: torch.compile the network for training steps (the EMA network and sampling stay eager).
        p_uncond: for a class-conditional network (net.num_classes set; batches are (images, labels)), the
            probability that training replaces a label by the null class (Ho & Salimans 2021).
        guidance: the classifier-free guidance scale w that sampling uses unless told otherwise.
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        recipe: Recipe | None = None,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int = 5000,
        lr_decay: str = "constant",
        final_lr_ratio: float = 0.0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        config: dict[str, Any] | None = None,
        noise_seed: int = 0,
        compile: bool = False,
        p_uncond: float = 0.1,
        guidance: float = 0.0,
    ) -> None:
        super().__init__()
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay={lr_decay!r} is not one of {', '.join(LR_DECAYS)}")
        self.save_hyperparameters(ignore=["net", "diffusion", "recipe"])
        self.net = net
        self.ema = EMA(net, decay=ema_decay, warmup=ema_warmup)
        self.diffusion = diffusion
        self.recipe = recipe if recipe is not None else Recipe(diffusion)
        if self.recipe.diffusion is not diffusion:
            raise ValueError("the recipe must be made for this module's diffusion: Recipe(diffusion, ...)")
        self.stable_target = StableTargetField(self.recipe.stf_reference)
        self._noise_generators: dict[torch.device, torch.Generator] = {}
        self.loss_check = FiniteLossCheck()
        # the compiled network shares the parameters of self.net; kept out of the module tree (and state_dict)
        self.__dict__["train_net"] = torch.compile(net) if compile else net

    # ------------------------------------------------------------------ training
    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(x_t, t) if y is None else self.net(x_t, t, y)

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network (its null class is num_classes); None: unconditional."""
        return getattr(self.net, "num_classes", None)

    def _images(self, batch: Any) -> Tensor:
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def _network_of(self, net: nn.Module, batch: Any, labels_dropped: Tensor | None = None) -> Any:
        """The network as the diffusion calls it, net(x, t) (net(x, t, x_cond=...) when self-conditioned): with the
        batch's labels for a conditional network."""
        if self.num_classes is None:
            return net
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError(
                "this network is class-conditional but the batches carry no labels: train with condition=class "
                "(data.labels=true)"
            )
        y = batch[1] if labels_dropped is None else labels_dropped
        return lambda x, t, **kw: net(x, t, y, **kw)

    def noise_generator(self, device: torch.device, micro_batch: int = 0) -> torch.Generator:
        """The generator for this step's t and eps (one per device, reseeded every step: cheap, no sync)."""
        g = self._noise_generators.get(device)
        if g is None:
            g = self._noise_generators[device] = torch.Generator(device=device)
        return g.manual_seed(
            noise_key(self.hparams.noise_seed, self.global_rank, self.global_step, micro_batch)
        )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """t ~ p(t) of the recipe, eps ~ N(0, I), x_t = q_sample(x_0, t, eps), loss = lambda(t) ||target -
        net(x_t, t)||^2 (the target: the objective's, from x_0 or from the stable target field)."""
        x0 = self._images(batch)
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        g = self.noise_generator(x0.device, batch_idx % accumulate)
        t = self.recipe.sample_timesteps(x0.shape[0], x0.device, g)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=g)
        labels = dropped = None
        if self.num_classes is not None and isinstance(batch, (list, tuple)):
            labels = batch[1]
            dropped = drop_labels(labels, self.hparams.p_uncond, self.num_classes, g)
        net = self._network_of(self.train_net, batch, dropped)
        x0_target = self.stable_target.target(x0, labels, dropped, self.num_classes)
        loss = self.recipe.losses(net, x0, t, noise, generator=g, x0_target=x0_target).mean()
        self.loss_check.submit(loss, self.global_step)  # no host/device sync on a GPU: see FiniteLossCheck
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ema_decay", ema_decay_at(self.global_step, self.ema.decay, self.ema.warmup))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net, self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=hp.lr,
            betas=tuple(hp.adam_betas),
            eps=hp.eps,
            weight_decay=hp.weight_decay,
        )
        warmup = max(0, int(hp.warmup_steps))
        decay, final = hp.get("lr_decay", "constant"), hp.get("final_lr_ratio", 0.0)

        def factor(step: int) -> float:
            progress = training_progress(self.trainer) if self._trainer is not None else 0.0
            return lr_at(step, 1.0, warmup, decay, progress, final)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """The learning rate of the first step is this run's: optim.lr of its config (which may change on resume, while
        the scheduler state in a checkpoint carries the old one) at this step's progress (a checkpoint carries the rate
        its scheduler computed for the end of its own run: zero, when that run ended at its max_time or max_steps)."""
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            scheduler.base_lrs = [float(self.hparams.lr)] * len(scheduler.base_lrs)
            groups = scheduler.optimizer.param_groups
            for group, factor in zip(groups, scheduler.lr_lambdas, strict=True):
                group["initial_lr"] = float(self.hparams.lr)
                group["lr"] = float(self.hparams.lr) * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in groups]

    # ------------------------------------------------------------------ validation: held-out loss with EMA weights
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The loss of the EMA network on held-out images, with t uniform and eps fixed per batch so curves are
        comparable (the recipe's weights, never the stable target: held-out images are not training targets)."""
        x0 = self._images(batch)
        g = torch.Generator(device=x0.device).manual_seed(1000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device, generator=g)
        noise = torch.randn(x0.shape, device=x0.device, generator=g)
        net = self._network_of(self.ema.module, batch)
        loss = self.recipe.losses(net, x0, t, noise, generator=g).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x0.shape[0])
        return loss

    # ------------------------------------------------------------------ sampling
    def reverse_model(
        self, n: int, *, labels: Tensor | None = None, guidance: float | None = None, use_ema: bool = True
    ) -> tuple[Any, tuple[int, ...]]:
        """(the network as a sampler calls it, model(x, t), for a batch of n; the batch's image shape).

        A class-conditional network draws image i of class labels[i] (default: classes 0, 1, ..., K-1, 0, 1, ...,
        evenly spread) with classifier-free guidance scale `guidance` (default: the module's); labels and guidance
        given to an unconditional network are refused. A self-conditioned network sees each call's previous x_0
        (one wrapper per chain: ask again for each chain)."""
        net = self.ema.module if use_ema else self.net
        model = net
        if self.num_classes is None:
            if labels is not None or guidance:
                raise ValueError(
                    "this model is unconditional: it takes no class labels and no guidance (train with condition=class)"
                )
        else:
            if labels is None:
                labels = spread_labels(n, self.num_classes)
            labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
            if labels.shape != (n,):
                raise ValueError(
                    f"need one label per image: {n} images, labels of shape {tuple(labels.shape)}"
                )
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if bad.numel():
                raise ValueError(
                    f"label {int(bad[0])} is outside the model's classes 0..{self.num_classes - 1}: use labels in that range"
                )
            w = self.hparams.guidance if guidance is None else guidance
            model = ClassConditioned(net, labels, self.num_classes, w)
        if self.diffusion.self_condition:
            model = SelfConditioned(model, self.diffusion.data_prediction)
        return model, (n, net.in_channels, net.image_size, net.image_size)

    @torch.no_grad()
    def sample(
        self,
        sampler: Sampler,
        n: int,
        *,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        progress: Progress | None = None,
        labels: Tensor | None = None,
        guidance: float | None = None,
    ) -> Tensor:
        """n images in [-1, 1] from the EMA (or raw) network with `sampler` (labels and guidance: see
        `reverse_model`)."""
        model, shape = self.reverse_model(n, labels=labels, guidance=guidance, use_ema=use_ema)
        with self.evaluating(use_ema):
            return sampler.sample(model, shape, generator=generator, device=self.device, progress=progress)

    @contextmanager
    def evaluating(self, use_ema: bool = True) -> Iterator[None]:
        """The EMA (or raw) network in eval mode for the duration (sampling, editing), then as it was."""
        net = self.ema.module if use_ema else self.net
        was_training = net.training
        net.eval()
        try:
            yield
        finally:
            net.train(was_training)

    def on_train_end(self) -> None:
        self.loss_check.flush()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loss_check.flush()  # never save the weights of a step whose loss was not finite
        checkpoint["ddpm_format"] = 1
        # the stable target's reference: a resumed run trains on the same targets
        if self.stable_target.images is not None:
            checkpoint["stf_reference"] = self.stable_target.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("stf_reference")
        if saved is not None:
            self.stable_target.load_state_dict(saved)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


def noise_key(seed: int, rank: int, step: int, micro_batch: int = 0) -> int:
    """A distinct 63-bit seed for each (seed, rank, step, micro-batch < 64) with rank < 65,537, step < 1,000,003."""
    return ((((seed * 65_537 + rank) * 1_000_003 + step) * 64) + micro_batch) % 2**63


LR_DECAYS = ("constant", "cosine", "linear")


def lr_at(
    step: int,
    lr: float,
    warmup_steps: int,
    decay: str = "constant",
    progress: float = 0.0,
    final_ratio: float = 0.0,
) -> float:
    """The learning rate at optimizer step `step` (0-based), `progress` in [0, 1] of the way through training:

        lr * min(1, (step + 1) / warmup_steps) * d(progress),

    a linear warm-up to lr over warmup_steps steps (0: none), times the decay d: 1 (`constant`),
    r + (1 - r) (1 + cos(pi p)) / 2 (`cosine`) or r + (1 - r) (1 - p) (`linear`), r = final_ratio."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    p = min(1.0, max(0.0, progress))
    if decay == "constant":
        d = 1.0
    elif decay == "cosine":
        d = final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    elif decay == "linear":
        d = final_ratio + (1 - final_ratio) * (1 - p)
    else:
        raise ValueError(f"lr decay {decay!r} is not one of {', '.join(LR_DECAYS)}")
    return lr * warm * d


def training_progress(trainer: L.Trainer) -> float:
    """How far training is, in [0, 1]: the larger of global_step / max_steps and elapsed / max_time (Lightning's
    Timer, which counts resumed segments too), i.e. of whichever limit ends the run first; 0 with neither."""
    fractions = [0.0]
    if trainer.max_steps and trainer.max_steps > 0:
        fractions.append(trainer.global_step / trainer.max_steps)
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    if timer is not None and timer._duration:
        fractions.append(timer.time_elapsed("train") / timer._duration)
    return min(1.0, max(fractions))


__all__ = ["LR_DECAYS", "DiffusionModule", "NonFiniteLossError", "lr_at", "noise_key", "training_progress"]
