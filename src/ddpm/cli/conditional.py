"""What sample.py and evaluate.py may ask of a checkpoint's classes, checked in one place."""

from __future__ import annotations

from typing import Any

from ddpm.errors import ConfigError


def refuse_unless_conditional(ckpt_path: str, num_classes: int | None, asked: dict[str, Any]) -> None:
    """ConfigError naming each class setting asked of an unconditional checkpoint: labels, a guidance scale other than
    0, a guidance sweep (`asked`: setting name -> value; None, 0 and [] ask for nothing)."""
    if num_classes is not None:
        return
    named = [f"{key}={value}" for key, value in asked.items() if value is not None and not _nothing(value)]
    if named:
        raise ConfigError(
            f"{' and '.join(named)} need{'s' if len(named) == 1 else ''} a class-conditional checkpoint, and "
            f"{ckpt_path} is unconditional: drop {'it' if len(named) == 1 else 'them'} (or train with condition=class)"
        )


def _nothing(value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    try:
        return len(value) == 0
    except TypeError:
        return False
