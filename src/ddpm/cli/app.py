"""Run a root script's @hydra.main function so that a command line Hydra cannot compose (an unknown group option, a
value of the wrong type, a misspelt key, bad override syntax) ends in one sentence and exit code 2, like every other
mistake a user can make, instead of Hydra's report and exit code 1.

Hydra reports such errors in `hydra._internal.utils.run_and_report`, which prints and calls sys.exit(1); `run`
puts a version in its place for the duration of the call that turns the composition errors into one sentence and
leaves every other error to Hydra's own report (hydra-core is pinned in pyproject.toml; tests/integration cover it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra._internal.utils as hydra_internal
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import OmegaConfBaseException

from ddpm.cli.errors import EXIT_CONFIG_ERROR
from ddpm.schema import type_error_sentence


def run(main: Callable[[], Any]) -> None:
    """Call `main` (a function decorated with @hydra.main) with one-sentence composition errors."""
    report = hydra_internal.run_and_report

    def one_sentence_report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as ex:
            sentence = composition_error_sentence(ex)
            if sentence is None:
                return report(lambda e=ex: _raise(e))  # Hydra's own report of everything else
            print(f"error: {sentence}", file=sys.stderr, flush=True)
            sys.exit(EXIT_CONFIG_ERROR)

    hydra_internal.run_and_report = one_sentence_report
    try:
        main()
    finally:
        hydra_internal.run_and_report = report


def _raise(ex: BaseException) -> None:
    raise ex


def composition_error_sentence(ex: BaseException) -> str | None:
    """One sentence for an error of composing the config (None: not such an error)."""
    cause = ex.__cause__
    if isinstance(ex, OSError) and ex.filename:  # e.g. Hydra creating a run folder on a read-only disk
        return (
            f"cannot write {ex.filename} ({ex.strerror}): choose a writable folder (e.g. hydra.run.dir=...)"
        )
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file:
        group, _, option = str(ex.missing_cfg_file).rpartition("/")
        if ex.options:
            choices = ", ".join(o for o in ex.options if not o.endswith("_schema") and not o.startswith("_"))
            return f"unknown option {group}={option}: choose one of {choices}"
        return f"config {ex.missing_cfg_file} not found: check the name"
    if isinstance(ex, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        return type_error_sentence(cause)
    if isinstance(ex, OverrideParseException):
        return f"could not read the command line ({str(ex).strip().splitlines()[0]}): write overrides as key=value"
    if isinstance(ex, CompactHydraException):
        lines = [line.strip() for line in str(ex).strip().splitlines() if line.strip()]
        text = " ".join(lines)
        if "No match in the defaults list" in text:
            key = text.split("'")[1] if "'" in text else text
            return f"{key} is not a config group or setting: check its spelling"
        if "To append to your config use +" in text or "not in struct" in text:
            key = text.split("'")[1] if "'" in text else text
            return f"{key} is not a setting: check its spelling (a new key is added with +{key}=...)"
        return text if len(lines) <= 3 else lines[0]
    return None
