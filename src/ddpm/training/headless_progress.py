"""Progress lines for runs nobody watches in a terminal (SLURM logs, nohup, CI): the rich bar draws nothing there."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Timer

log = logging.getLogger("ddpm.progress")


def eta_seconds(
    steps_done: int, steps_left: int | None, elapsed: float, time_left: float | None
) -> float | None:
    """Seconds left to whichever ends the run first: the steps left at the rate so far, or the time budget left."""
    left = [t for t in (time_left,) if t is not None]
    if steps_left is not None and steps_done > 0:
        left.append(steps_left * elapsed / steps_done)
    return max(0.0, min(left)) if left else None


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class HeadlessProgress(L.Callback):
    """When stdout is not a terminal (or always, with `always=True`), log a line every `every_s` seconds of training:
    step / max_steps, the training loss, images per second, elapsed time and the ETA to max_steps or max_time.
    Lines go through logging, so they reach the console and the run's train.log."""

    def __init__(self, every_s: float = 10.0, always: bool = False) -> None:
        self.every_s, self.always = every_s, always
        self._start = self._last = 0.0
        self._images = 0
        self._first_step = 0

    def enabled(self) -> bool:
        return self.always or not sys.stdout.isatty()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._images, self._first_step = 0, trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images += len(images) * trainer.world_size
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last < self.every_s or not self.enabled():
            return
        self._last = now
        elapsed = now - self._start
        loss = trainer.callback_metrics.get("train/loss")
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)  # Trainer(max_time=...)
        steps_left = (
            trainer.max_steps - trainer.global_step if trainer.max_steps and trainer.max_steps > 0 else None
        )
        eta = eta_seconds(
            trainer.global_step - self._first_step,
            steps_left,
            elapsed,
            timer.time_remaining() if timer else None,
        )
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        log.info(
            "step %d%s | loss %s | %.1f img/s | elapsed %s | ETA %s",
            trainer.global_step,
            total,
            f"{float(loss):.4f}" if loss is not None else "?",
            self._images / elapsed if elapsed > 0 else 0.0,
            clock(elapsed),
            clock(eta),
        )
