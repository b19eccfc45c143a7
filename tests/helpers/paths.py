"""Where the repository and the shared offline assets (MNIST raw files, FID Inception weights) are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("DDPM_SHARED", ROOT.parent / "shared"))
MNIST_RAW = SHARED / "data" / "MNIST" / "raw"
FID_WEIGHTS = SHARED / "assets" / "inception-2015-12-05-fid-features-only-nofc.pth"
LEGACY = ROOT / "tests" / "data" / "legacy_v1"  # a checkpoint and samples written by older code
