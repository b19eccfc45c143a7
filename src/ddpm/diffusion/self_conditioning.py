"""Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits", sec. 3.3 and Algorithms 1-2).

The network sees a second input beside x_t: an estimate x0_hat of x_0, zeros when there is none.

Training (Algorithm 1): for half of the batches, x0_hat is the network's own x_0 prediction from x_t with the empty
condition, computed without gradient; for the other half x0_hat = 0. Then the loss is that of net(x_t, t, x0_hat).
That coin is part of the training recipe: `ddpm.diffusion.recipe.self_condition_input`.

Sampling (Algorithm 2): each network call of a chain is conditioned on the x_0 predicted by the chain's previous call
(zeros at the first), so the estimate is refined along the chain at no extra network call.

A self-conditioned network is called as net(x_t, t, x_cond=x0_hat); x0_hat is the data prediction the diffusion
derives from the output (`GaussianDiffusion.predict_x0_and_eps`, clipped to [-1, 1] when the diffusion clips).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# net(x_t, t, x_cond=x0_hat) -> the network output
SelfConditionedNet = Callable[..., Tensor]
# the x_0 implied by a network output: x0_of(x_t, t, output)
DataPrediction = Callable[[Tensor, Tensor, Tensor], Tensor]


class SelfConditioned:
    """A self-conditioned network seen by a sampler as model(x, t) (Algorithm 2): each call is conditioned on the
    x_0 that the previous call predicted, zeros at the first call. One instance per chain: it carries the chain's
    state, and a call on a batch of another shape starts over from zeros."""

    def __init__(self, net: SelfConditionedNet, x0_of: DataPrediction) -> None:
        self.net, self.x0_of = net, x0_of
        self.previous: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        cond = self.previous
        if cond is None or cond.shape != x.shape:
            cond = torch.zeros_like(x)
        out = self.net(x, t, x_cond=cond)
        self.previous = self.x0_of(x, t, out).to(x.dtype)
        return out


def refined(net: SelfConditionedNet, x0_of: DataPrediction) -> Callable[[Tensor, Tensor], Tensor]:
    """The network as a plain model(x, t) where no chain carries an estimate (the variational bound, which scores
    each t from its own x_t): two calls, the second conditioned on the first's x_0 prediction from zeros, the way
    training's self-conditioned half sees x_t."""

    def model(x: Tensor, t: Tensor) -> Tensor:
        first = net(x, t, x_cond=torch.zeros_like(x))
        return net(x, t, x_cond=x0_of(x, t, first).to(x.dtype))

    return model
