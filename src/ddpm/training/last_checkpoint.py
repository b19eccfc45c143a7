"""`checkpoints/last.ckpt` always holds the latest state: written when training ends and when the run is told to stop
(SIGTERM from `kill`, a scheduler or SLURM; SIGINT from Ctrl-C), whatever ModelCheckpoint's interval."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class LastCheckpoint(L.Callback):
    """Write `<dirpath>/last.ckpt` when training ends, and on SIGTERM or Ctrl-C (SIGINT): finish the current step,
    write it, say how to resume, and stop. A second Ctrl-C stops at once (Lightning's KeyboardInterrupt).

    ModelCheckpoint(every_n_train_steps=k) alone leaves last.ckpt up to k - 1 steps behind the end of the run.

    Lightning notices SIGTERM (`trainer.received_sigterm`) but on one device only stops at the end of an epoch, and
    saves nothing; Ctrl-C it turns into a KeyboardInterrupt wherever the step is. This callback makes both stop after
    the step in progress (Ctrl-C is routed into Lightning's SIGTERM flag); under DDP, Lightning broadcasts the flag
    and raises on every rank at the start of the next step, and all ranks take part in the save. The checkpoint holds
    the model, EMA, optimizer, LR schedule, step counter and data position: resume with `ckpt_path=<that file>`.
    `stop_signal` is the signal that stopped the run (None: it was not stopped); `resume_command` is the command the
    stop message gives, `{path}` standing for the checkpoint.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "last.ckpt",
        resume_command: str = "python train.py ckpt_path={path}",
    ) -> None:
        self.dirpath, self.filename, self.resume_command = dirpath, filename, resume_command
        self.saved: Path | None = None  # the last file written
        self.stop_signal: int | None = None
        self._previous_sigint = None

    def path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / self.filename

    def save(self, trainer: L.Trainer) -> Path:
        self.saved = self.path(trainer)
        trainer.save_checkpoint(self.saved)
        return self.saved

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint(trainer))

    def _on_sigint(self, trainer: L.Trainer):
        def handler(signum, frame) -> None:
            self.stop_signal = signal.SIGINT
            trainer._signal_connector.received_sigterm = True  # stop after this step, as on SIGTERM
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop at once
            if trainer.is_global_zero:
                log.warning(
                    "Ctrl-C: stopping after this step to save the run (press Ctrl-C again to stop at once)"
                )

        return handler

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        if not written_at_this_step(trainer, self.path(trainer)):
            self.save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            self.stop_signal = self.stop_signal or signal.SIGTERM
            self.save(trainer)

    def stopped_message(self, step: int) -> str:
        """What a stopped run says last (after the progress bar has gone): the signal, the step, how to resume."""
        name = signal.Signals(self.stop_signal or signal.SIGTERM).name
        resume = self.resume_command.format(path=self.saved)
        return f"stopped by {name} at step {step}: saved {self.saved}; resume with: {resume}"


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
