"""The reference side of FID: the held-out split's Inception statistics, computed once and cached on disk.

The cache file is named by what the statistics depend on and nothing else: a sha256 over the exact uint8 tensors fed
to Inception (every reference image, in order, with its shape) and the weights file's own sha256. Two datasets of the
same size and count, another split seed or another held-out fraction therefore never share a file; the same images
read from anywhere do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ddpm.images import to_rgb_uint8
from ddpm.metrics.fid import load_or_compute_reference, resolve_weights, set_reference, weights_id


def reference_batches(held_out: Dataset, n: int, batch_size: int = 100) -> list[Tensor]:
    """The first n held-out images as the uint8 [B, 3, H, W] batches Inception reads (labels dropped)."""
    batches = []
    for batch in DataLoader(Subset(held_out, range(n)), batch_size=batch_size):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        batches.append(to_rgb_uint8(images))
    return batches


def content_key(batches: Iterable[Tensor], weights_path: str | None) -> str:
    """sha256 of the uint8 images (shapes and bytes, in order) and of the Inception weights file."""
    digest = hashlib.sha256(weights_id(weights_path).encode())
    for b in batches:
        digest.update(str(tuple(b.shape)).encode())
        digest.update(b.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def reference_cache_path(
    cache_dir: str | Path, source: str, n: int, key: str, split: str = "held_out"
) -> Path:
    """<cache_dir>/<source>-<split>-n<n>-<first 16 hex digits of the content key>.pt (source, split and n for
    people; the key alone tells the files apart)."""
    return Path(cache_dir) / f"{source}-{split}-n{n}-{key[:16]}.pt"


def reference_size(held_out, reference_n: int | None) -> int:
    """How many held-out images the reference statistics use: the first reference_n (None: all of them)."""
    return min(reference_n or len(held_out), len(held_out))


def install_reference(
    metric,
    datamodule,
    cache_dir: str,
    reference_n: int | None,
    weights_path: str | None,
    *,
    is_rank_zero: bool = True,
    barrier: Callable[[], None] | None = None,
    split: str = "held_out",
) -> int:
    """Put the reference statistics of the held-out split (or of the training split, `split="train"`) into `metric`
    (cached on disk; rank 0 only under DDP, the other ranks hold zeros that the cross-rank sum adds in). Returns the
    number of reference images."""
    images = datamodule.reference_set(split)
    n_ref = reference_size(images, reference_n)
    batches = reference_batches(images, n_ref)
    key = content_key(batches, resolve_weights(weights_path))
    path = reference_cache_path(cache_dir, datamodule.source, n_ref, key, split)
    stats = load_or_compute_reference(metric, batches, path) if is_rank_zero else None
    if barrier is not None:
        barrier()
    if is_rank_zero:
        set_reference(metric, stats)
    else:  # the sums stay on rank 0 (they are summed across ranks); every rank needs the features for KID
        set_reference(metric, None, torch.load(path, map_location="cpu", weights_only=True)["real_features"])
    return n_ref
