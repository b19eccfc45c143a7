"""Run the real root scripts (train.py, sample.py, evaluate.py) in a subprocess, as a user would, on configs
small enough for a few seconds on 2 CPU cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.helpers.paths import ROOT

# a model and run small enough for a few seconds on 2 CPU cores
TINY = [
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_groups=4",
    "model.attn_resolutions=[14]",
    "schedule.num_timesteps=100",
    "data.batch_size=8",
    "data.eval_batch_size=100",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.sample_grid.n=4",
    "callbacks.fid.n=8",  # the end-of-training FID / KID, when local Inception weights are found
    "callbacks.fid.reference_n=16",
    "sampler.steps=3",
    "~callbacks.progress_bar",
]

# validation FID on 8 samples of the 3-step validation sampler against 16 held-out images, after every validation
TINY_FID = [
    "callbacks=fid",
    "callbacks.fid.every_n_validations=1",
]


def run_script(
    script: str, *overrides: str, cwd: Path, timeout: int = 300, test_helpers: bool = False
) -> subprocess.CompletedProcess:
    """`python <script> <overrides>` in cwd; test_helpers=True lets configs name classes of tests.helpers."""
    env = dict(
        os.environ, DDPM_ROOT=str(cwd), WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0"
    )
    env.pop("PYTHONPATH", None)
    if test_helpers:
        env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_tiny(root: Path, *overrides: str) -> Path:
    """Train the TINY config (no logger, no grid) under root/run with `overrides`; returns its last.ckpt."""
    proc = run_script(
        "train.py",
        *TINY,
        "logger=none",
        "~callbacks.sample_grid",
        *overrides,
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run" / "checkpoints" / "last.ckpt"


def sample_images(ckpt: Path, out: Path, *overrides: str, cwd: Path):
    """`python sample.py ckpt_path=<ckpt> <overrides>` into `out`; returns its samples.npz images (uint8 [N, H, W, C])."""
    proc = run_script("sample.py", f"ckpt_path={ckpt}", *overrides, f"hydra.run.dir={out}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out / "samples.npz")["images"]


def evaluate_nll(ckpt: Path, out: Path, *, cwd: Path, n: int = 4) -> dict:
    """`python evaluate.py ckpt_path=<ckpt> metrics=[nll] nll.n=<n>` into `out`; returns metrics.json's nll."""
    proc = run_script(
        "evaluate.py", f"ckpt_path={ckpt}", "metrics=[nll]", f"nll.n={n}", f"hydra.run.dir={out}", cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["nll"]


def popen(script: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, DDPM_ROOT=str(cwd), WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def interrupt_when(proc: subprocess.Popen, ready, timeout: float = 240) -> tuple[str, str]:
    """Send Ctrl-C (SIGINT) once `ready()` holds; (stdout, stderr) of the ended process."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=240)
