"""A progress bar for long loops (sampling chains, feature extraction), built on rich."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_bar(
    iterable: Iterable[T], description: str = "", *, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """Yield from `iterable`, drawing a rich progress bar on stderr when `enabled`. It fits the `progress` argument
    of the samplers and the bound (`ddpm.diffusion`), which report progress through whatever they are given."""
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)
