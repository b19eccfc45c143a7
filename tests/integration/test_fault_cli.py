"""A real `python train.py` run killed with SIGKILL again and again (at random moments, during validation, in the
middle of a checkpoint write) and restarted in its folder each time: last.ckpt always loads, its step never goes
back, and the run finishes with finite weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpm.checkpoint import read_checkpoint
from tests.helpers.cli import TINY
from tests.helpers.paths import ROOT

MAX_STEPS = 24
# every 2 steps: validation (loss, grid) and a ModelCheckpoint write of last.ckpt; both pause in a marked window
OVERRIDES = [
    *TINY,
    f"trainer.max_steps={MAX_STEPS}",
    "logger=none",
    "trainer.plugins=[{_target_:tests.helpers.faults.SlowCheckpointIO}]",
    "+callbacks.fault_marker._target_=tests.helpers.faults.PhaseMarker",
]


def start(run_dir, markers) -> subprocess.Popen:
    env = dict(os.environ, DDPM_ROOT=str(run_dir.parent), WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    env |= {"DDPM_FAULT_DIR": str(markers), "DDPM_FAULT_SLEEP": "0.6"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *OVERRIDES, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def kill_when(proc: subprocess.Popen, marker, delay: float = 0.0, timeout: float = 120.0) -> bool:
    """SIGKILL proc `delay` seconds after `marker` appears; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_sigkill_at_any_moment_leaves_a_checkpoint_that_resumes(tmp_path):
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    last = run / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    steps = []
    for moment in ("validating", "writing", "random", "writing", "validating", "random"):
        for m in markers.iterdir():
            m.unlink()
        proc = start(run, markers)
        if moment == "random":  # anywhere in the next 1.5 s once the restarted run is training and validating
            killed = kill_when(proc, markers / "validating", delay=rng.uniform(0.0, 1.5))
        else:
            killed = kill_when(proc, markers / moment)
        assert killed, f"the run ended before the kill ({moment}): {proc.stderr.read()[-2000:]}"
        assert proc.returncode == -signal.SIGKILL
        # the first checkpoint is written at step 2, before the first validation and before the first write that
        # pauses (the kill of the first "writing" comes after a restart): from the first kill on there is one
        assert last.exists(), f"no last.ckpt after the kill while {moment}"
        steps.append(read_checkpoint(last)["global_step"])  # loads: never half written
        if (
            moment == "writing"
        ):  # killed with half a file written: the torn file is the .tmp beside, not last.ckpt
            assert last.with_name("last.ckpt.tmp").exists()
    assert steps == sorted(steps) and steps[-1] > 0, steps  # the saved step never goes back, and it advanced

    proc = start(run, markers)  # the last restart runs to the end
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    ckpt = read_checkpoint(last)
    assert ckpt["global_step"] == MAX_STEPS
    assert not list(run.rglob("*.tmp"))  # the finished run's own writes replaced what a killed write left
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
