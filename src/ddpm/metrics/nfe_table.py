"""The quality-vs-NFE table (Song et al. 2021, Table 1 layout): one row per sampler, one column per step count, FID
and KID at the same N and seeds in every cell; as markdown, CSV and a plot of FID and KID against network calls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddpm import reports
from ddpm.metrics.kid import format_kid

COLUMNS = ("sampler", "steps", "nfe", "fid", "kid", "kid_std", "seconds_per_image", "n")


def _cells(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[str], list[int], dict[tuple[str, int], dict[str, Any]]]:
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = sorted({int(r["steps"]) for r in rows})
    return samplers, steps, {(r["sampler"], int(r["steps"])): r for r in rows}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Three blocks, sampler x steps: FID, KID (x 10^3, ± std over subsets) and seconds per image; the best FID and
    KID of each column in bold."""
    samplers, steps, cell = _cells(rows)
    n = rows[0]["n"] if rows else 0
    header = "| sampler | " + " | ".join(f"{s}" for s in steps) + " |"
    rule = "|---|" + "---:|" * len(steps)
    blocks = []
    for title, fmt, key in (
        (f"FID (N = {n}) by network calls per image", lambda r: f"{r['fid']:.2f}", "fid"),
        (
            f"KID × 10³ (N = {n}; ± std over subsets, none when one subset holds all the images) by network calls per image",
            lambda r: format_kid(r["kid"], r["kid_std"], 1e3, 2, note=""),
            "kid",
        ),
        ("seconds per image", lambda r: f"{r['seconds_per_image']:.3f}", None),
    ):
        lines = [f"**{title}**", "", header, rule]
        best = {
            s: min((cell[(name, s)][key] for name in samplers if (name, s) in cell), default=None)
            if key
            else None
            for s in steps
        }
        for name in samplers:
            values = []
            for s in steps:
                r = cell.get((name, s))
                if r is None:
                    values.append("")
                    continue
                text = fmt(r)
                values.append(f"**{text}**" if key and r[key] == best[s] and len(samplers) > 1 else text)
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One line per cell, the columns of COLUMNS."""
    return reports.write_csv(rows, path, COLUMNS)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """FID and KID against network calls per image (log x axis), one line per sampler, as a PNG."""
    samplers, _, _ = _cells(rows)
    fig, (a, b) = reports.figure()
    for name in samplers:
        mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in mine]
        a.plot(nfe, [r["fid"] for r in mine], marker="o", label=name)
        b.errorbar(
            nfe,
            [r["kid"] for r in mine],
            yerr=[r["kid_std"] or 0.0 for r in mine],
            marker="o",
            capsize=2,
            label=name,
        )
    for ax, what in ((a, "FID"), (b, "KID")):
        ax.set_xscale("log")
        ax.set(xlabel="network calls per image (NFE)", ylabel=what, title=f"{what} against NFE")
    a.legend()
    return reports.save_figure(fig, path, title, (a, b))


def write_report(sweep: dict[str, Any], about: str, data: str, folder: Path) -> dict[str, str]:
    """nfe_table.md (what was measured, then `markdown_table`), nfe_table.csv and nfe_plot.png of a sampler sweep
    (`sweep`: its rows, reference and seed) in `folder`; `about` names the checkpoint, `data` the data source."""
    rows = sweep["rows"]
    intro = (
        f"Quality against network calls: {about}, against the {sweep['reference']}; the same {rows[0]['n']} seeds "
        f"(fid.seed={sweep['seed']}) in every cell.\n\n"
    )
    title = f"{data}, N = {rows[0]['n']}"
    return reports.write_report(
        folder, "nfe", intro + markdown_table(rows), rows, COLUMNS, lambda path: plot(rows, path, title)
    )
