"""The table a sweep ends with: one row per job (its number, its overrides, its result or the sentence it failed
with), printed and written beside the jobs as sweep_results.md and sweep_results.yaml; the exit code says whether
any job failed (2 when every failure was a user's mistake, 1 otherwise)."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from hydra.core.utils import JobReturn, JobStatus

from ddpm.cli.errors import EXIT_CONFIG_ERROR, JobFailed


@dataclass
class JobRow:
    job: int
    overrides: str
    ok: bool
    result: str  # the returned value, or the sentence the job failed with
    user_mistake: bool = False


def shown_overrides(overrides: list[str] | tuple[str, ...]) -> str:
    return " ".join(o for o in overrides if not o.startswith("hydra.")) or "(none)"


def row_of(num: int, ret: JobReturn) -> JobRow:
    """The row of a job Hydra ran (JobReturn: its status and return value or exception)."""
    overrides = shown_overrides(ret.overrides or [])
    if ret.status == JobStatus.COMPLETED:
        value = ret._return_value
        shown = "done" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
        return JobRow(num, overrides, True, shown)
    exc = ret._return_value
    if isinstance(exc, JobFailed):
        return JobRow(num, overrides, False, exc.sentence, exc.user_mistake)
    return JobRow(num, overrides, False, f"{type(exc).__name__}: {exc}")


def markdown(rows: list[JobRow]) -> str:
    """The rows (in job order, as `finish` sorts them) as a markdown table."""
    lines = ["| job | overrides | result |", "|---|---|---|"]
    for r in rows:
        result = r.result if r.ok else f"**failed**: {r.result}"
        lines.append(f"| {r.job} | {r.overrides.replace('|', '/')} | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def finish(sweep_dir: str | Path, rows: list[JobRow], what: str = "sweep") -> None:
    """Print the table, write it into sweep_dir, and exit non-zero when a job failed."""
    folder = Path(sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r.job)
    common = set.intersection(*(set(r.overrides.split(" ")) for r in rows)) if len(rows) > 1 else set()
    for r in rows:  # the overrides that tell the jobs apart; those of every job are in multirun.yaml
        r.overrides = " ".join(o for o in r.overrides.split(" ") if o not in common) or "(the shared ones)"
    table = markdown(rows)
    (folder / "sweep_results.md").write_text(f"# {what}: {folder}\n\n{table}")
    (folder / "sweep_results.yaml").write_text(yaml.safe_dump([asdict(r) for r in rows], sort_keys=False))
    print(f"\n{what} results ({folder / 'sweep_results.md'}):\n{table}", flush=True)
    failed = [r for r in rows if not r.ok]
    if failed:
        print(
            f"error: {len(failed)} of {len(rows)} jobs failed (job {', '.join(str(r.job) for r in failed)}): "
            f"see {folder / 'sweep_results.md'}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_CONFIG_ERROR if all(r.user_mistake for r in failed) else 1)
