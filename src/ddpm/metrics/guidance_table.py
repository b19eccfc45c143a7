"""The guidance sweep of a class-conditional model: FID, KID and class accuracy against the guidance scale w (the
fidelity-diversity trade-off of Ho & Salimans 2021), as markdown, CSV and a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddpm import reports
from ddpm.metrics.kid import format_kid

COLUMNS = ("guidance", "fid", "kid", "kid_std", "accuracy", "seconds_per_image", "nfe", "n")


def markdown_table(rows: Sequence[dict[str, Any]], classifier_accuracy: float) -> str:
    """One line per w: FID, KID x 10^3 (± std over subsets), class accuracy and seconds per image."""
    n = rows[0]["n"] if rows else 0
    lines = [
        f"| w | FID (N = {n}) | KID × 10³ (± std over subsets, if they differ) | class accuracy | s per image |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kid = format_kid(r["kid"], r["kid_std"], 1e3, 2, note="")
        lines.append(
            f"| {r['guidance']:g} | {r['fid']:.2f} | {kid} | {100 * r['accuracy']:.1f}% | "
            f"{r['seconds_per_image']:.3f} |"
        )
    lines.append("")
    lines.append(
        f"Class accuracy is judged by a classifier trained on the training split; on the held-out split it scores "
        f"{100 * classifier_accuracy:.1f}%."
    )
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One line per w, the columns of COLUMNS."""
    return reports.write_csv(rows, path, COLUMNS)


def plot(rows: Sequence[dict[str, Any]], path: Path, classifier_accuracy: float, title: str = "") -> Path:
    """FID and KID against w (left), class accuracy against w with the classifier's own held-out accuracy (right)."""
    w = [r["guidance"] for r in rows]
    fig, (a, b) = reports.figure()
    a.plot(w, [r["fid"] for r in rows], marker="o", label="FID")
    a.set(xlabel="guidance scale w", ylabel="FID", title="fidelity to the data: FID, KID")
    k = a.twinx()
    k.errorbar(
        w,
        [r["kid"] for r in rows],
        yerr=[r["kid_std"] or 0.0 for r in rows],
        marker="s",
        color="C1",
        capsize=2,
    )
    k.set_ylabel("KID", color="C1")
    b.plot(w, [100 * r["accuracy"] for r in rows], marker="o", color="C2", label="samples")
    b.axhline(100 * classifier_accuracy, color="gray", ls="--", label="classifier on held-out data")
    b.set(xlabel="guidance scale w", ylabel="class accuracy (%)", title="class accuracy of the samples")
    b.legend()
    return reports.save_figure(fig, path, title, (a, b))


def write_report(
    sweep: dict[str, Any], classifier_accuracy: float, about: str, data: str, folder: Path
) -> dict[str, str]:
    """guidance_table.md (what was measured, then `markdown_table`), guidance_table.csv and guidance_plot.png of a
    guidance sweep (`sweep`: its rows, sampler, reference and seed) in `folder`; `about` names the checkpoint, `data`
    the data source."""
    rows = sweep["rows"]
    intro = (
        f"Guidance sweep: {about}, {sweep['sampler']}, classes spread evenly, against the {sweep['reference']}; the "
        f"same {rows[0]['n']} seeds (fid.seed={sweep['seed']}) for every w.\n\n"
    )
    title = f"{data}, N = {rows[0]['n']}"
    return reports.write_report(
        folder,
        "guidance",
        intro + markdown_table(rows, classifier_accuracy),
        rows,
        COLUMNS,
        lambda path: plot(rows, path, classifier_accuracy, title),
    )
