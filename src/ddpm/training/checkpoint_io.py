"""Checkpoint files that are never half written: a process killed at any moment leaves the old file or the new one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to `<name>.tmp` beside it, flushes it to disk, then renames it over `<name>`.

    A rename within one directory is atomic, so `kill -9` during a write leaves the previous `last.ckpt` intact.
    (Lightning's own save stages the file in the system temp directory and moves it into place, which is a copy,
    not a rename, whenever that directory lies on another file system, as /tmp often does.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            self.write(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def write(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        torch.save(checkpoint, f)
