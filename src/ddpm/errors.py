"""The one exception type that means 'the user must change something' (a config value, a path, a file), and
`building`, which turns a library's complaint about a config value into one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")

# errors raised while building from a config that mean the config itself is wrong
CONFIG_MISTAKES = (ValueError, TypeError, KeyError)


class ConfigError(ValueError):
    """Raised before any work is done; its message is one sentence saying what to change."""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (Hydra's instantiate wraps the real error as __cause__)."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def building(
    what: str, fn: Callable[[], R], mistakes: tuple[type[BaseException], ...] = CONFIG_MISTAKES
) -> R:
    """Run one build step of the config. An exception of a `mistakes` type (ValueError, TypeError, KeyError by
    default) from it, or at the root of the chain that Hydra's instantiate wraps around it, is a config mistake and
    becomes a ConfigError naming the group."""
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as e:
        cause = root_cause(e)
        culprit = cause if isinstance(cause, mistakes) else e
        if not isinstance(culprit, mistakes):
            raise
        lines = str(culprit).strip().splitlines()
        raise ConfigError(f"invalid {what} config: {lines[0] if lines else repr(culprit)}") from e
