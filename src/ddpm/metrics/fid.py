"""FID (Heusel et al. 2017) of generated images against a held-out split, as the papers compute it.

- Network: the standard FID Inception-v3 (TF graph 2015-12-05) as packaged by torch-fidelity, 2048-d pool features,
  through torchmetrics' FrechetInceptionDistance.
- Resize: to 299x299 with TF1-style bilinear interpolation (antialias=False), as in the published FIDs.
- Input: uint8 images quantised exactly as a saved PNG (floor(255 x + 0.5) of x in [0, 1]: round, not truncate);
  grayscale is repeated to 3 channels.
- Reference: the held-out split's feature sums (mean and covariance) are computed once and cached on disk, keyed by
  the content of the reference images (a hash of the exact uint8 tensors fed to Inception) and of the weights file
  (see `ddpm.metrics.reference`).

FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)). It is biased in N: numbers at different N, or against
other reference sets, are not comparable; hence the metric name carries N and the sampler, e.g. val/fid_1k_ddim50.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm.errors import ConfigError
from ddpm.images import to_rgb_uint8
from ddpm.metrics.kid import kid_from_features

WEIGHTS_ENV = "DDPM_FID_WEIGHTS"
OFFICIAL_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
_REFERENCE_KEYS = (*_REAL_STATES, "real_features")  # the sums for FID, the features themselves for KID


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


def local_weights(path: str | None = None) -> str | None:
    """The Inception weights available without a download: `path` or $DDPM_FID_WEIGHTS (which must exist), else the
    official file in the torch hub cache where torch-fidelity keeps it, else None."""
    resolved = resolve_weights(path)
    if resolved is not None:
        return resolved
    cached = Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_WEIGHTS
    return str(cached) if cached.is_file() else None


_weights_digests: dict[tuple[str, int, int], str] = {}


def weights_id(path: str | None) -> str:
    """The identity of the weights for cache keys: 'official' (the libraries' own file), or the sha256 of a local
    file's content (computed once per process for a given path, size and modification time)."""
    if path is None:
        return "official"
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _weights_digests:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _weights_digests[key] = digest.hexdigest()
    return _weights_digests[key]


class InceptionMetrics(FrechetInceptionDistance):
    """torchmetrics' FID, which also keeps the generated images' features, so that KID (see `ddpm.metrics.kid`) comes
    from the same single Inception pass. `compute()` is FID; `kid()` is (mean, std) against `real_features`, the
    reference features installed with the statistics (`set_reference`). Under DDP the generated features of all ranks
    are gathered (a `cat` state), like FID's sums."""

    def __init__(self, *args, kid_subsets: int = 100, kid_subset_size: int = 1000, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_state("fake_features", [], dist_reduce_fx="cat")
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.real_features: Tensor | None = None

    def features(self, imgs: Tensor) -> Tensor:
        """Inception pool features [B, 2048] of uint8 images, in float64."""
        features = self.inception(imgs)
        self.orig_dtype = features.dtype
        return features.double().reshape(len(imgs), -1)

    def add_features(self, features: Tensor, real: bool) -> None:
        prefix = "real" if real else "fake"
        getattr(self, f"{prefix}_features_sum").add_(features.sum(dim=0))
        getattr(self, f"{prefix}_features_cov_sum").add_(features.t().mm(features))
        getattr(self, f"{prefix}_features_num_samples").add_(features.shape[0])
        if not real:
            self.fake_features.append(features.float())

    def update(self, imgs: Tensor, real: bool) -> None:
        self.add_features(self.features(imgs), real)

    def kid(self, seed: int = 0) -> tuple[float, float]:
        """KID (mean, std over subsets) of the generated features so far against the reference features."""
        if self.real_features is None:
            raise RuntimeError("KID needs the reference features: install them with set_reference")
        with self.sync_context():
            fake = (
                self.fake_features
                if isinstance(self.fake_features, Tensor)
                else torch.cat(self.fake_features)
            )
            return kid_from_features(self.real_features, fake, self.kid_subsets, self.kid_subset_size, seed)


def make_fid(weights_path: str | None = None) -> InceptionMetrics:
    """FID (torchmetrics) and KID on the standard Inception, 2048-d features, TF1 bilinear resize, real statistics kept
    on reset.

    With no local weights and no network, says in one sentence what to set instead of failing in a download.
    """
    weights_path = resolve_weights(weights_path)
    try:
        metric = InceptionMetrics(
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


def fid_key(n: int, sampler_label: str, metric: str = "fid") -> str:
    """Metric name with N and sampler: fid_1k_ddim50, fid_500_ddpm1000, kid_50k_ddim100 (metric="kid")."""
    count = f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
    return f"{metric}_{count}_{sampler_label}"


@torch.no_grad()
def compute_reference(
    metric: FrechetInceptionDistance, images: Tensor | Iterable[Tensor], batch_size: int = 100
) -> dict[str, Tensor]:
    """Feed real images through the metric: one float tensor in [-1, 1] (split into batches), or batches that are
    float (model space) or already the uint8 Inception input. Returns the reference: the metric's real-feature
    statistics (FID) and the features themselves (KID), and installs the features in the metric."""
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    device = metric.real_features_sum.device
    kept = []
    for batch in batches:
        batch = batch[0] if isinstance(batch, (list, tuple)) else batch
        u8 = batch if batch.dtype == torch.uint8 else to_rgb_uint8(batch)
        features = metric.features(u8.to(device))
        metric.add_features(features, real=True)
        kept.append(features.float().cpu())
    stats = {k: getattr(metric, k).detach().cpu().clone() for k in _REAL_STATES}
    stats["real_features"] = torch.cat(kept) if kept else torch.zeros(0, metric.real_features_sum.shape[0])
    metric.real_features = stats["real_features"]
    return stats


def set_reference(
    metric: InceptionMetrics, stats: dict[str, Tensor] | None, features: Tensor | None = None
) -> None:
    """Install real-feature statistics (None: zeros, for DDP ranks other than 0 whose states are summed in) and the
    reference features for KID (from `stats`, or `features` on the other DDP ranks)."""
    for k in _REAL_STATES:
        state = getattr(metric, k)
        state.copy_(stats[k].to(state.device) if stats is not None else torch.zeros_like(state))
    metric.real_features = stats["real_features"] if stats is not None else features


def load_or_compute_reference(
    metric: FrechetInceptionDistance, images, cache_path: Path
) -> dict[str, Tensor]:
    """Cached reference statistics at cache_path, computing and saving them on the first call."""
    if cache_path.is_file():
        try:
            stats = torch.load(cache_path, map_location="cpu", weights_only=True)
            if set(stats) == set(_REFERENCE_KEYS):  # older cache files hold no features: computed anew
                return stats
        except Exception:  # a truncated cache file: recompute it
            pass
    stats = compute_reference(metric, images)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    torch.save(stats, tmp)
    tmp.replace(cache_path)  # atomic: an interrupted run never leaves a half-written cache behind
    return stats


@torch.no_grad()
def score_samples(
    metric: InceptionMetrics,
    draw: Callable[[int, torch.Generator], Tensor],
    n: int,
    batch_size: int,
    seed: int,
    *,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """FID and KID (mean and std over subsets) of n fresh samples against the installed reference, from one Inception
    pass. `draw(count, generator)` returns `count` model-space images; this rank draws its share of the n
    (n // world_size, one more on the first n % world_size ranks) from a generator seeded with seed + rank, and
    torchmetrics gathers the features across ranks."""
    metric.reset()  # fake features only: reset_real_features=False
    share = n // world_size + (1 if rank < n % world_size else 0)
    generator = torch.Generator(device=device).manual_seed(seed + rank)
    for start in range(0, share, batch_size):
        metric.update(to_rgb_uint8(draw(min(batch_size, share - start), generator)), real=False)
    kid, kid_std = metric.kid()
    return {"fid": float(metric.compute()), "kid": kid, "kid_std": kid_std}
