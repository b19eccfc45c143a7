"""Wall-clock time and images seen, logged at every validation, so quality can be plotted against compute."""

from __future__ import annotations

import time

import lightning as L


class RunClock(L.Callback):
    """Logs `time/elapsed_s` (training wall-clock seconds, validation included, summed over resumed segments),
    `time/images_seen` (training images over all ranks) and `time/validation_s` (of the elapsed seconds, those spent
    in validation: held-out loss, sample grid, FID) at the end of every validation. All survive a resume."""

    def __init__(self) -> None:
        self.elapsed_before = 0.0  # seconds of earlier segments of this run (restored from the checkpoint)
        self.images_seen = 0
        self.validation_s = 0.0
        self._start: float | None = None
        self._validation_start: float | None = None

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop the clock: what runs after training (the final FID, the summary) is not training time."""
        self.elapsed_before, self._start = self.elapsed(), None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.images_seen += len(images) * trainer.world_size

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        pl_module.log("time/elapsed_s", self.elapsed(), sync_dist=False)
        pl_module.log("time/images_seen", float(self.images_seen), sync_dist=False)
        # the validations before this one, and this one so far (its loss and grid; callbacks later in the list, such
        # as the FID, count from the next point on)
        pl_module.log(
            "time/validation_s", self.validation_s + self._since_validation_start(), sync_dist=False
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_s += self._since_validation_start()
        self._validation_start = None

    def _since_validation_start(self) -> float:
        return time.monotonic() - self._validation_start if self._validation_start is not None else 0.0

    def state_dict(self) -> dict:
        return {
            "elapsed_s": self.elapsed(),
            "images_seen": self.images_seen,
            "validation_s": self.validation_s,
        }

    def load_state_dict(self, state: dict) -> None:
        self.elapsed_before = state.get("elapsed_s", 0.0)
        self.images_seen = state.get("images_seen", 0)
        self.validation_s = state.get("validation_s", 0.0)
