"""Helpers to run the real root scripts (train.py, ...) in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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
    "callbacks.sample_grid.steps=3",
    "~callbacks.progress_bar",
]

# validation FID on 8 samples of a 2-step sampler against 16 held-out images, after every validation
TINY_FID = [
    "callbacks=fid",
    "callbacks.fid.n=8",
    "callbacks.fid.steps=2",
    "callbacks.fid.reference_n=16",
    "callbacks.fid.every_n_validations=1",
]


def run_script(script: str, *overrides: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, DDPM_ROOT=str(cwd), WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0"
    )
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_train(tmp_path):
    def _run(*overrides: str, tiny: bool = True, run_dir: str = "run") -> subprocess.CompletedProcess:
        args = [*(TINY if tiny else []), f"hydra.run.dir={tmp_path / run_dir}", *overrides]
        return run_script("train.py", *args, cwd=tmp_path)

    return _run
