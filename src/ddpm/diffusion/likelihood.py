"""Pieces of the variational bound (Ho et al. 2020, eq. 5) in closed form, elementwise, in nats."""

from __future__ import annotations

import math

import torch
from torch import Tensor

BIN_HALF_WIDTH = 1.0 / 255.0  # data in [-1, 1] on 256 levels: bins of width 2/255


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) = 1/2 (-1 + logvar2 - logvar1 + e^(logvar1 - logvar2)
    + (mean1 - mean2)^2 e^(-logvar2))."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) for x on the 256-level grid in [-1, 1]: the mass of N(mean, e^(2 log_scale)) over x's bin
    [x - 1/255, x + 1/255], the edge bins extended to -inf (x = -1) and +inf (x = 1) (Ho et al.'s decoder L_0)."""
    dtype = x.dtype
    # float64: in float32 the clamp below (1 - 1e-12) rounds to 1 and a bin far from the mean gives log(0) = -inf
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + BIN_HALF_WIDTH)
    lower = inv_std * (x - mean - BIN_HALF_WIDTH)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)
    # log(Phi(upper) - Phi(lower)) computed stably as log Phi(upper) + log(1 - Phi(lower) / Phi(upper))
    log_mid = log_cdf_upper + torch.log1p(
        -torch.exp(torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=1 - 1e-12)
    )
    out = torch.where(x < -1 + 1e-3, log_cdf_upper, torch.where(x > 1 - 1e-3, log_survival_lower, log_mid))
    return out.to(dtype)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch."""
    return x.flatten(1).mean(1)


NATS_PER_BIT = math.log(2.0)
