"""SIGTERM mid-training saves a checkpoint; `python train.py ckpt_path=last` resumes it (the real CLI)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from ddpm.training import ema_decay_at
from tests.helpers.cli import TINY, run_script
from tests.helpers.paths import ROOT

LONG = [a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.val_check_interval"))]


def test_sigterm_saves_a_checkpoint_and_ckpt_path_last_resumes_it(tmp_path):
    env = dict(os.environ, DDPM_ROOT=str(tmp_path), WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("PYTHONPATH", None)
    args = [*LONG, "trainer.max_steps=1000", "trainer.val_check_interval=5", "logger=csv"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs = tmp_path / "logs" / "train" / "runs"
    deadline = time.monotonic() + 240
    while (
        not list(runs.glob("*/checkpoints/last.ckpt")) and time.monotonic() < deadline and proc.poll() is None
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "received SIGTERM at step" in out + err

    (first,) = runs.iterdir()
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    stopped = saved["global_step"]
    assert 5 <= stopped < 1000  # stopped mid-training, after the step in progress
    assert (
        saved["optimizer_states"]
        and saved["lr_schedulers"]
        and saved["ImageDataModule"]["batches"] == stopped
    )
    ema = {k: v for k, v in saved["state_dict"].items() if k.startswith("ema.module.")}
    assert ema

    time.sleep(1.1)  # run directories are named by the second
    resumed = run_script(
        "train.py", *args[:-3], f"trainer.max_steps={stopped + 1}", "logger=csv", "ckpt_path=last", cwd=tmp_path
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {first / 'checkpoints' / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    second = next(r for r in runs.iterdir() if r != first)
    final = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert final["global_step"] == stopped + 1  # the step counter continued
    # the run's clock continued too: images seen and wall-clock time count the first segment
    batch = saved["ImageDataModule"]["batch_size"]
    assert saved["callbacks"]["RunClock"]["images_seen"] == stopped * batch
    assert final["callbacks"]["RunClock"]["images_seen"] == (stopped + 1) * batch
    assert final["callbacks"]["RunClock"]["elapsed_s"] > saved["callbacks"]["RunClock"]["elapsed_s"] > 0
    with open(next(second.rglob("metrics.csv"))) as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [stopped]  # the one resumed step is logged as step `stopped` (0-based), not 0
    # the EMA continued from the saved one: one update, ema' = d ema_saved + (1 - d) theta', d at step `stopped`
    d = ema_decay_at(stopped, 0.995)
    for k, v in ema.items():
        theta = final["state_dict"][k.replace("ema.module.", "net.", 1)]
        torch.testing.assert_close(final["state_dict"][k], d * v + (1 - d) * theta, rtol=1e-5, atol=1e-7)


def test_ckpt_path_last_without_runs_is_one_sentence(run_train, tmp_path):
    proc = run_train("ckpt_path=last")
    assert proc.returncode == 2
    assert "ckpt_path=last: no run under" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_from_a_checkpoint_of_another_model_is_one_sentence(run_train, tmp_path):
    assert run_train().returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = run_train("model.base_channels=16", f"ckpt_path={ckpt}", run_dir="other")
    assert proc.returncode == 2
    assert "does not match the model of this run's config" in proc.stderr and "Traceback" not in proc.stderr
