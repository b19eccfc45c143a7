"""Exponential moving average of a network's weights, with a warm-up of the decay."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """Decay at optimizer step `step`: min(decay, (1 + step) / (10 + step)) with warm-up, else `decay`.

    The warm-up (as in tf.train.ExponentialMovingAverage with num_updates) lets the average follow the fast-moving
    early weights instead of remembering the random initialisation for ~1 / (1 - decay) steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


class EMA(nn.Module):
    """Holds `module`, a frozen copy of a network, updated as theta_ema <- decay theta_ema + (1 - decay) theta.

    Being an nn.Module attribute of the LightningModule, it is saved and restored with every checkpoint, moved with
    the module across devices, and broadcast from rank 0 with the network when DDP starts, so every rank holds the
    same average (each rank then applies the same all-reduced updates).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Move the average towards `model` at optimizer step `step`; returns the decay used."""
        decay = ema_decay_at(step, self.decay, self.warmup)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(buf)
        return decay
