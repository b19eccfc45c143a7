"""Stop training on a NaN or infinite loss without making every GPU step wait for the GPU."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddpm.errors import ConfigError


class NonFiniteLossError(ConfigError):
    """The loss became NaN or infinite; training stops before any weights updated with it are saved. A ConfigError:
    the user must change a setting (the learning rate, clipping, precision), and the entry point says so in one
    sentence."""


class FiniteLossCheck:
    """Raises NonFiniteLossError for a non-finite training loss, with the step it happened at.

    On a CPU the loss is read at once (`submit`). On CUDA, reading it would block the host until the GPU has
    finished every queued kernel, once per step; instead `submit` copies it to pinned host memory without blocking
    and records an event, and the next `flush` (at the start of the next step, before a checkpoint is written, at
    the end of training) waits only for that copy. A bad step therefore stops the run one step later on a GPU, and
    never after its weights have been saved.
    """

    def __init__(self) -> None:
        self._host: Tensor | None = None
        self._pending: tuple[torch.cuda.Event, int] | None = None

    def submit(self, loss: Tensor, step: int) -> None:
        if loss.device.type != "cuda":
            _check(loss.item(), step)
            return
        self.flush()
        if self._host is None:
            self._host = torch.empty((), dtype=torch.float32, pin_memory=True)
        self._host.copy_(loss.detach(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending = (event, step)

    def flush(self) -> None:
        if self._pending is None:
            return
        event, step = self._pending
        self._pending = None
        event.synchronize()
        _check(self._host.item(), step)


def _check(value: float, step: int) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the training loss became {value} at step {step}: lower optim.lr, keep trainer.gradient_clip_val on, "
            "or use fp32 precision"
        )
