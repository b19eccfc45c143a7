"""Class conditioning and classifier-free guidance (Ho & Salimans 2021) as a network wrapper every sampler can call.

A class-conditional network net(x, t, y) has a null class (y = num_classes) for the unconditional model. With guidance
scale w the sampler sees
    out(x, t) = (1 + w) net(x, t, y) - w net(x, t, null)
(eps for the eps objective; the combination is applied to whatever the network predicts, x0 and v alike, since each
is affine in eps at fixed x_t). Both terms come from one batched call on [x; x] with labels [y; null], so a guided
step costs one network call on twice the images. w = 0 is the plain conditional network, one call on the images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ConditionalNet = Callable[[Tensor, Tensor, Tensor], Tensor]


def spread_labels(n: int, num_classes: int) -> Tensor:
    """Labels for n images with the classes spread evenly: image i is class i mod num_classes."""
    return torch.arange(n) % num_classes


def drop_labels(
    labels: Tensor, p_uncond: float, null_class: int, generator: torch.Generator | None = None
) -> Tensor:
    """Each label replaced by the null class with probability p_uncond (the training of the unconditional model)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def guided(cond: Tensor, uncond: Tensor, guidance: float, channels: int) -> Tensor:
    """(1 + w) cond - w uncond on the first `channels` channels (the prediction); further channels (a learned
    variance) are the conditional network's."""
    mixed = (1 + guidance) * cond[:, :channels] - guidance * uncond[:, :channels]
    return torch.cat([mixed, cond[:, channels:]], dim=1) if cond.shape[1] > channels else mixed


class ClassConditioned:
    """net(x, t, y) seen by a sampler as model(x, t): labels fixed (one per image of the batch), guided with scale
    `guidance`. `evaluations` counts images passed through the network (2 per image and step when guided)."""

    def __init__(self, net: ConditionalNet, labels: Tensor, null_class: int, guidance: float = 0.0) -> None:
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {guidance}")
        self.net, self.labels, self.null_class, self.guidance = net, labels, null_class, float(guidance)
        self.calls = 0
        self.evaluations = 0

    def __call__(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        """Further per-image inputs of the network (a self-conditioned one's x_cond) are passed on, doubled too."""
        y = self.labels.to(x.device)
        self.calls += 1
        if self.guidance == 0:
            self.evaluations += x.shape[0]
            return self.net(x, t, y, **inputs)
        self.evaluations += 2 * x.shape[0]
        out = self.net(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([y, torch.full_like(y, self.null_class)]),
            **{name: torch.cat([v, v]) for name, v in inputs.items()},
        )
        cond, uncond = out.chunk(2)
        return guided(cond, uncond, self.guidance, x.shape[1])
