"""Hooks that open a window for a fault test to kill a real train.py run in: during validation, during a checkpoint
write. Each touches a marker file in $DDPM_FAULT_DIR, then waits $DDPM_FAULT_SLEEP seconds."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import lightning as L
import torch

from ddpm.training import AtomicCheckpointIO


def mark(name: str) -> None:
    folder = os.environ.get("DDPM_FAULT_DIR")
    if folder:
        Path(folder, name).touch()
        time.sleep(float(os.environ.get("DDPM_FAULT_SLEEP", "0.5")))


class SlowCheckpointIO(AtomicCheckpointIO):
    """The project's checkpoint writer, pausing with half of the file written."""

    def write(self, checkpoint, f) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        mark("writing")
        f.write(data[len(data) // 2 :])


class PhaseMarker(L.Callback):
    """Pauses in the middle of every validation."""

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        mark("validating")
