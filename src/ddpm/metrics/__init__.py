"""FID against held-out data (torchmetrics + torch-fidelity's Inception), with reference statistics cached by content."""

from ddpm.metrics.fid import (
    WEIGHTS_ENV,
    fid_key,
    fid_of_samples,
    load_or_compute_reference,
    make_fid,
    resolve_weights,
    set_reference,
)
from ddpm.metrics.reference import content_key, install_reference, reference_cache_path

__all__ = [
    "WEIGHTS_ENV",
    "content_key",
    "fid_key",
    "fid_of_samples",
    "install_reference",
    "load_or_compute_reference",
    "make_fid",
    "reference_cache_path",
    "resolve_weights",
    "set_reference",
]
