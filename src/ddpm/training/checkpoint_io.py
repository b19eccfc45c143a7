"""Checkpoint files that are never half written: a process killed at any moment leaves the old file or the new one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm.errors import ConfigError


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, read-only folder): one sentence naming the folder."""


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
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                self.write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # a full disk, a read-only folder, a quota: the old file stays
            if (
                isinstance(e, RuntimeError) and "write" not in str(e).lower()
            ):  # torch.save's zip writer: "file write failed"
                raise
            tmp.unlink(missing_ok=True)
            reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[-1][:120]
            raise CheckpointWriteError(
                f"could not write checkpoint {path.name} in {path.parent} ({reason}): free space or "
                f"make the folder writable; the previous {path.name} there is unchanged, resume from it with "
                f"ckpt_path={path}"
            ) from e

    def write(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        torch.save(checkpoint, f)
