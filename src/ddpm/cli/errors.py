"""Turn configuration mistakes into one sentence on stderr and exit code 2, instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ddpm.errors import ConfigError

R = TypeVar("R")

EXIT_CONFIG_ERROR = 2


def as_config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError inside `exc`'s chain, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_on_config_error(fn: Callable[[], R]) -> R:
    """Call fn; on a ConfigError anywhere in the exception chain print `error: <sentence>` and exit with code 2."""
    try:
        return fn()
    except Exception as e:
        err = as_config_error(e)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
