"""How a job of an entry point ends when something goes wrong: one sentence, never a traceback for a user's mistake.

- A single run: a ConfigError anywhere in the exception chain prints `error: <sentence>` and exits with code 2;
  Ctrl-C prints one line and exits with 130 (a shell's code for SIGINT).
- A job of a sweep (`-m`, Optuna): any exception prints `error: job <n> (<overrides>): <sentence>` and is raised
  again as JobFailed, an ordinary exception, which Hydra records as the job's failure: the sweep goes on to its next
  job and lists the failure in its table at the end (hydra_plugins/ddpm_sweepers).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from ddpm.errors import ConfigError

R = TypeVar("R")
log = logging.getLogger(__name__)

EXIT_CONFIG_ERROR = 2
EXIT_SIGINT = 130


class JobFailed(Exception):
    """A sweep job that failed; `sentence` says why, `user_mistake` whether a setting must change (a ConfigError)."""

    def __init__(self, sentence: str, user_mistake: bool) -> None:
        super().__init__(sentence)
        self.sentence, self.user_mistake = sentence, user_mistake


def as_config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError inside `exc`'s chain, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_name() -> str:
    """`job 3 (schedule=cosine optim.lr=0.01)`: the sweep job in progress, as the sweep's table names it."""
    job = HydraConfig.get().job
    return f"job {job.num} ({job.override_dirname or 'no overrides'})"


def run_job(fn: Callable[[], R], interrupted: str = "interrupted: nothing was written") -> R:
    """Call fn, the work of one entry point, and end it as the module docstring says. `interrupted` is the line
    printed on Ctrl-C."""
    try:
        return fn()
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SIGINT) from None
    except Exception as e:
        err = as_config_error(e)
        if not in_sweep():
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_CONFIG_ERROR) from None
        if err is None:  # a fault of the code, not of the settings: the traceback goes to the job's log file
            log.error("%s failed", job_name(), exc_info=e)
            sentence = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} (traceback in the job's log)"
        else:
            sentence = str(err)
        print(f"error: {job_name()}: {sentence}", file=sys.stderr, flush=True)
        raise JobFailed(sentence, user_mistake=err is not None) from None


def check_writable(folder: Path, key: str) -> Path:
    """Create `folder` and write a file in it now, so that a read-only or full destination is refused before any
    work, in one sentence naming the folder and the setting that chose it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as f:
            f.write(b"0")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(
            f"cannot write to {folder} ({e.strerror or e}): set {key} (or hydra.run.dir) to a writable folder"
        ) from None
    return folder
