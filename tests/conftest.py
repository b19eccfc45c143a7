"""Shared test fixtures: offline W&B, few threads, the shared offline assets (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import FID_WEIGHTS, MNIST_RAW

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def mnist_raw() -> Path:
    if not (MNIST_RAW / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST raw files not found under {MNIST_RAW} (set DDPM_SHARED to the shared/ folder)")
    return MNIST_RAW


@pytest.fixture(scope="session")
def fid_weights() -> str:
    if not FID_WEIGHTS.is_file():
        pytest.skip(
            f"FID Inception weights not found at {FID_WEIGHTS} (set DDPM_SHARED to the shared/ folder)"
        )
    return str(FID_WEIGHTS)
