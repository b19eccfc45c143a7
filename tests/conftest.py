"""Shared test fixtures: offline W&B, few threads, paths to the shared offline assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DDPM_SHARED", ROOT.parent / "shared"))
MNIST_RAW = SHARED / "data" / "MNIST" / "raw"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def mnist_raw() -> Path:
    if not (MNIST_RAW / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST raw files not found under {MNIST_RAW} (set DDPM_SHARED to the shared/ folder)")
    return MNIST_RAW


FID_WEIGHTS = SHARED / "assets" / "inception-2015-12-05-fid-features-only-nofc.pth"


@pytest.fixture(scope="session")
def fid_weights() -> str:
    if not FID_WEIGHTS.is_file():
        pytest.skip(
            f"FID Inception weights not found at {FID_WEIGHTS} (set DDPM_SHARED to the shared/ folder)"
        )
    return str(FID_WEIGHTS)
