"""`checkpoints/last.ckpt` always holds the latest state: written when training ends and when the run is told to stop
(SIGTERM from `kill`, a scheduler or SLURM), whatever ModelCheckpoint's interval."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """Write `<dirpath>/last.ckpt` when training ends, and on SIGTERM: finish the current step, write it, and stop.

    ModelCheckpoint(every_n_train_steps=k) alone leaves last.ckpt up to k - 1 steps behind the end of the run.

    Lightning notices SIGTERM (`trainer.received_sigterm`) but on one device only stops at the end of an epoch, and
    saves nothing. This callback stops after the step in progress; under DDP, Lightning broadcasts the signal and
    raises on every rank at the start of the next step, and all ranks take part in the save. The checkpoint holds the
    model, EMA, optimizer, LR schedule, step counter and data position: resume with `ckpt_path=<that file>`.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath, self.filename = dirpath, filename
        self.saved: Path | None = None  # the last file written

    def path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / self.filename

    def save(self, trainer: L.Trainer) -> Path:
        self.saved = self.path(trainer)
        trainer.save_checkpoint(self.saved)
        return self.saved

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not written_at_this_step(trainer, self.path(trainer)):
            self.save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            path = self.save(trainer)
            if trainer.is_global_zero:
                log.warning(
                    "received SIGTERM at step %d: saved %s; resume with ckpt_path=%s",
                    trainer.global_step,
                    path,
                    path,
                )


def written_at_this_step(trainer: L.Trainer, path: Path) -> bool:
    """Whether `path` already holds the trainer's current step (a ModelCheckpoint wrote it at the last step of a run
    whose max_steps is a multiple of the checkpoint interval): writing it again would repeat the same weights, EMA,
    optimizer state and step. The file is memory-mapped: only its step counter is read."""
    if not path.is_file():
        return False
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # unreadable (e.g. cut short): write it anew
        return False
    return isinstance(saved, dict) and saved.get("global_step") == trainer.global_step
