"""FID against held-out data (torchmetrics + torch-fidelity's Inception), with cached reference statistics."""

from ddpm.metrics.fid import (
    WEIGHTS_ENV,
    fid_images,
    fid_key,
    load_or_compute_reference,
    make_fid,
    reference_cache_path,
    resolve_weights,
    set_reference,
)

__all__ = [
    "WEIGHTS_ENV",
    "fid_images",
    "fid_key",
    "load_or_compute_reference",
    "make_fid",
    "reference_cache_path",
    "resolve_weights",
    "set_reference",
]
