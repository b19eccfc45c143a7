"""The few lines a run ends with: what it reached, where its files are, and the next commands."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from ddpm.training.run_clock import RunClock
from ddpm.training.sample_fid import SampleFID

log = logging.getLogger(__name__)


def report_run(trainer: L.Trainer, out: Path, seconds: float) -> None:
    """Log the step reached and the last train/val metrics, the checkpoint (and each distillation round's student),
    the time spent on validation and the final FID, the last sample grid, the W&B run (with how to view and upload
    it), and the sample / evaluate commands."""
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/loss", "val/"))
    }
    reached = " · ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())) or "no metrics logged"
    ckpt = out / "checkpoints" / "last.ckpt"
    grids = sorted((out / "samples").glob("*.png"), key=lambda p: p.stat().st_mtime)
    students = sorted((out / "checkpoints").glob("student_*steps.ckpt"), key=lambda p: p.stat().st_mtime)
    runs = sorted((out / "wandb").glob("offline-run-*")) + sorted((out / "wandb").glob("run-*"))
    lines = [
        f"run finished: step {trainer.global_step} in {seconds / 60:.1f} min; {reached}",
        f"  checkpoint: {ckpt}" if ckpt.is_file() else "  checkpoint: none written",
    ]
    clock = next((cb for cb in trainer.callbacks if isinstance(cb, RunClock)), None)
    fid = next((cb for cb in trainer.callbacks if isinstance(cb, SampleFID) and cb.end_seconds), None)
    if clock is not None or fid is not None:
        spent = []
        if clock is not None:
            spent.append(f"validation {clock.validation_s:.0f} s of {clock.elapsed():.0f} s training")
        if fid is not None:
            spent.append(f"final FID / KID {fid.end_seconds:.0f} s")
        lines.append(f"  time:       {'; '.join(spent)}")
    for student in students:  # distill.py: each round's student
        lines.append(f"  student:    {student}")
    if grids:
        lines.append(f"  last grid:  {grids[-1]}")
    if runs:
        lines.append(
            f"  W&B run:    {runs[-1]}  (view: wandb leet {out / 'wandb'}; upload: wandb sync {runs[-1]})"
        )
    if ckpt.is_file():
        lines.append(f"  sample:     python sample.py ckpt_path={ckpt}")
        lines.append(f"  evaluate:   python evaluate.py ckpt_path={ckpt}")
    log.info("\n".join(lines))
