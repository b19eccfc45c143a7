"""Hooks that open a window for a fault test to kill a real train.py run in: during validation, during a checkpoint
write. Each touches a marker file in $DDPM_FAULT_DIR, then waits $DDPM_FAULT_SLEEP seconds."""

from __future__ import annotations

import errno
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


class FailingCheckpointIO(AtomicCheckpointIO):
    """The project's checkpoint writer, failing at its `fail_at_write`-th write (1-based) after half of the file is
    written, as a disk that fills up or a folder that turns read-only does."""

    error_number = 0

    def __init__(self, fail_at_write: int = 2) -> None:
        super().__init__()
        self.fail_at_write, self.writes = fail_at_write, 0

    def write(self, checkpoint, f) -> None:
        self.writes += 1
        if self.writes < self.fail_at_write:
            return super().write(checkpoint, f)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError(self.error_number, os.strerror(self.error_number))


class DiskFullCheckpointIO(FailingCheckpointIO):
    error_number = errno.ENOSPC


class ReadOnlyCheckpointIO(FailingCheckpointIO):
    error_number = errno.EROFS


class SignalAt(L.Callback):
    """Sends the process `signum` (SIGTERM by default) when training reaches step `step`: an interruption at a known
    step, for tests that compare a resumed run with an uninterrupted one."""

    def __init__(self, step: int, signum: int = 15) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
