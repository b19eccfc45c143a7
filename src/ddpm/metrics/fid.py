"""FID (Heusel et al. 2017) of generated images against a held-out split, as the papers compute it.

- Network: the standard FID Inception-v3 (TF graph 2015-12-05) as packaged by torch-fidelity, 2048-d pool features,
  through torchmetrics' FrechetInceptionDistance.
- Resize: to 299x299 with TF1-style bilinear interpolation (antialias=False), as in the published FIDs.
- Input: uint8 images quantised exactly as a saved PNG (floor(255 x + 0.5) of x in [0, 1]: round, not truncate);
  grayscale is repeated to 3 channels.
- Reference: the held-out split's feature sums (mean and covariance) are computed once and cached on disk, keyed by
  source, split, image size, channels, number of images and weights file.

FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)). It is biased in N: numbers at different N, or against
other reference sets, are not comparable; hence the metric name carries N and the sampler, e.g. val/fid_1k_ddim50.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm.errors import ConfigError

WEIGHTS_ENV = "DDPM_FID_WEIGHTS"
OFFICIAL_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def resolve_weights(path: str | None = None) -> str | None:
    """The Inception weights file to load: `path`, else $DDPM_FID_WEIGHTS, else None (the libraries' own cache or
    download). Raises ConfigError for a path that does not exist."""
    path = path or os.environ.get(WEIGHTS_ENV) or None
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"FID Inception weights {p} do not exist: point fid weights_path or ${WEIGHTS_ENV} at the .pth"
        )
    return str(p)


def weights_id(path: str | None) -> str:
    """A short identity of the weights for cache keys: 'official', or a hash of a local file's name and size."""
    if path is None:
        return "official"
    p = Path(path)
    return hashlib.sha256(f"{p.name}:{p.stat().st_size}".encode()).hexdigest()[:12]


def make_fid(weights_path: str | None = None) -> FrechetInceptionDistance:
    """torchmetrics FID on the standard Inception, 2048-d features, TF1 bilinear resize, real statistics kept on reset.

    With no local weights and no network, says in one sentence what to set instead of failing in a download.
    """
    weights_path = resolve_weights(weights_path)
    try:
        metric = FrechetInceptionDistance(
            feature=2048,
            reset_real_features=False,
            normalize=False,
            feature_extractor_weights_path=weights_path,
            antialias=False,
        )
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise ConfigError(
            f"the FID Inception weights could not be loaded or downloaded ({type(e).__name__}): set ${WEIGHTS_ENV} "
            f"(or the FID callback's weights_path) to a local copy of {OFFICIAL_WEIGHTS}, or run once with internet"
        ) from e
    metric.requires_grad_(False)
    return metric


def fid_images(x: Tensor) -> Tensor:
    """Model-space images in [-1, 1] -> uint8 [B, 3, H, W] exactly as a saved PNG would hold them."""
    u8 = (((x.float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


def fid_key(n: int, sampler_label: str) -> str:
    """Metric name with N and sampler: fid_1k_ddim50, fid_500_ddpm1000, fid_50k_ddim100."""
    count = f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
    return f"fid_{count}_{sampler_label}"


def reference_cache_path(
    cache_dir: str | Path,
    source: str,
    split: str,
    image_size: int,
    channels: int,
    n: int,
    weights_path: str | None,
) -> Path:
    name = f"{source}-{split}-{image_size}px-{channels}ch-n{n}-{weights_id(weights_path)}.pt"
    return Path(cache_dir) / name


@torch.no_grad()
def compute_reference(
    metric: FrechetInceptionDistance, images: Tensor | torch.utils.data.DataLoader, batch_size: int = 100
) -> dict[str, Tensor]:
    """Feed real images (float [-1, 1]) through the metric; returns its real-feature statistics."""
    batches = images if isinstance(images, torch.utils.data.DataLoader) else images.split(batch_size)
    device = metric.real_features_sum.device
    for batch in batches:
        batch = batch[0] if isinstance(batch, (list, tuple)) else batch
        metric.update(fid_images(batch.to(device)), real=True)
    return {k: getattr(metric, k).detach().cpu().clone() for k in _REAL_STATES}


def set_reference(metric: FrechetInceptionDistance, stats: dict[str, Tensor] | None) -> None:
    """Install real-feature statistics (None: zeros, for DDP ranks other than 0 whose states are summed in)."""
    for k in _REAL_STATES:
        state = getattr(metric, k)
        state.copy_(stats[k].to(state.device) if stats is not None else torch.zeros_like(state))


def load_or_compute_reference(
    metric: FrechetInceptionDistance, images, cache_path: Path
) -> dict[str, Tensor]:
    """Cached reference statistics at cache_path, computing and saving them on the first call."""
    if cache_path.is_file():
        try:
            stats = torch.load(cache_path, map_location="cpu", weights_only=True)
            if set(stats) == set(_REAL_STATES):
                return stats
        except Exception:  # a truncated cache file: recompute it
            pass
    stats = compute_reference(metric, images)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    torch.save(stats, tmp)
    tmp.replace(cache_path)  # atomic: an interrupted run never leaves a half-written cache behind
    return stats
