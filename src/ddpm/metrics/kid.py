"""Kernel Inception Distance (Binkowski et al. 2018): an unbiased estimate of the squared MMD between Inception
features of generated and real images, with the cubic polynomial kernel k(x, y) = (x . y / d + 1)^3, averaged over
random subsets (mean and standard deviation reported), as torch-fidelity computes it. Unbiased: unlike FID its
expectation does not depend on N, so CPU-sized evaluations compare honestly."""

from __future__ import annotations

import torch
from torch import Tensor


def polynomial_mmd2(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD^2 of two equal-size feature sets [m, d] with k(a, b) = (a . b / d + 1)^3:
    (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    off_diagonal = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    return float(off_diagonal / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid_from_features(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float | None]:
    """(mean, population std) of polynomial_mmd2 over `subsets` random subsets of min(subset_size, N_real, N_fake)
    features drawn without replacement from each set, in float64.

    When that subset is all of both sets (N_real = N_fake <= subset_size) every subset is the same: the value is
    computed once and the std is None (there is no spread to report, and 0 would claim a certainty there is not)."""
    real, fake = real.double(), fake.double()
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(
            f"KID needs at least 2 images on each side, got {len(real)} real and {len(fake)} generated"
        )
    if m == len(real) == len(fake):
        return polynomial_mmd2(fake, real), None
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(
        [
            polynomial_mmd2(
                fake[torch.randperm(len(fake), generator=g)[:m]],
                real[torch.randperm(len(real), generator=g)[:m]],
            )
            for _ in range(subsets)
        ],
        dtype=torch.float64,
    )
    return float(values.mean()), float(values.std(unbiased=False))


def format_kid(
    kid: float,
    std: float | None,
    scale: float = 1.0,
    digits: int = 4,
    note: str = " (one subset: all images)",
) -> str:
    """ "kid ± std" (both times `scale`), or "kid" and `note` when there is no spread over subsets (std None).
    Table cells use format_kid(kid, std, 1e3, 2, note="")."""
    if std is None:
        return f"{scale * kid:.{digits}f}{note}"
    return f"{scale * kid:.{digits}f} ± {scale * std:.{digits}f}"
