"""FID against held-out data (torchmetrics + torch-fidelity's Inception), with reference statistics cached by content."""

from ddpm.metrics import guidance_table, nfe_table
from ddpm.metrics.fid import (
    WEIGHTS_ENV,
    InceptionMetrics,
    fid_key,
    load_or_compute_reference,
    local_weights,
    make_fid,
    resolve_weights,
    score_samples,
    set_reference,
)
from ddpm.metrics.kid import kid_from_features
from ddpm.metrics.reference import content_key, install_reference, reference_cache_path

__all__ = [
    "WEIGHTS_ENV",
    "content_key",
    "fid_key",
    "InceptionMetrics",
    "install_reference",
    "kid_from_features",
    "load_or_compute_reference",
    "local_weights",
    "guidance_table",
    "make_fid",
    "nfe_table",
    "reference_cache_path",
    "resolve_weights",
    "score_samples",
    "set_reference",
]
