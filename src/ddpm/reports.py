"""What evaluation and training write for people: CSV tables and matplotlib figures saved as PNG (headless)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    """One line per row, the given columns in order (other keys of a row are left out)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def figure(ncols: int = 2, size: tuple[float, float] = (9, 3.4)):
    """(fig, axes) of a one-row matplotlib figure on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=size, dpi=100)


def save_figure(fig, path: Path, title: str = "", axes=()) -> Path:
    """Light grids on `axes`, the title, a tight layout; saved as PNG at `path` and closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    folder: Path,
    stem: str,
    markdown: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    plot: Callable[[Path], Path],
) -> dict[str, str]:
    """A table three ways in `folder`: <stem>_table.md (`markdown`), <stem>_table.csv (`rows`, `columns`) and
    <stem>_plot.png (drawn by `plot(path)`); returns their paths by kind."""
    md = folder / f"{stem}_table.md"
    md.write_text(markdown)
    csv_path = write_csv(rows, folder / f"{stem}_table.csv", columns)
    png = plot(folder / f"{stem}_plot.png")
    return {"markdown": str(md), "csv": str(csv_path), "plot": str(png)}
