"""Model space -> pictures: the one place where images in [-1, 1] become [0, 1] floats and the uint8 a PNG holds.

Every consumer uses these: the validation grid, FID/KID (Inception reads uint8), `sample.py`'s PNG and .npz, and
the forward-process figures. A PNG stores floor(255 u + 0.5) of u in [0, 1] (round, not truncate), which is
exactly what torchvision's save_image writes; `to_uint8` gives the same bytes, so what is measured is what is saved.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image


def to_unit_interval(x: Tensor) -> Tensor:
    """u = clamp((x + 1) / 2, 0, 1): model-space images [-1, 1] -> [0, 1]."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def to_uint8(x: Tensor) -> Tensor:
    """Model-space images -> uint8 exactly as a saved PNG quantises them: floor(255 u + 0.5), u = to_unit_interval(x)."""
    return (to_unit_interval(x) * 255.0 + 0.5).floor().clamp(0, 255).to(torch.uint8)


def to_rgb_uint8(x: Tensor) -> Tensor:
    """`to_uint8` with grayscale repeated to 3 channels: [B, 3, H, W], what the FID Inception network reads."""
    u8 = to_uint8(x)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


def grid_of(images_u8: Tensor, nrow: int | None = None) -> Tensor:
    """uint8 images [B, C, H, W] -> one [C, H', W'] float grid in [0, 1] (white 2-pixel borders, square by default)
    whose pixels are exactly k / 255 for the images' bytes k."""
    nrow = nrow or int(math.ceil(math.sqrt(len(images_u8))))
    return make_grid(images_u8.float().cpu() / 255.0, nrow=nrow, padding=2, pad_value=1.0)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save model-space images (float, [-1, 1]) or their uint8 bytes as one PNG grid; returns the path."""
    u8 = images if images.dtype == torch.uint8 else to_uint8(images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid_of(u8, nrow), path)
    return path
