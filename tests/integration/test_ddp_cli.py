"""`python train.py trainer.devices=2` on CPU: real Lightning DDP (two processes, gloo), the real Hydra CLI."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.cli import TINY_FID
from tests.helpers.wandb_files import find_offline_runs


def test_two_process_ddp_run_with_validation_fid(run_train, tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_train(
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "data.global_batch_size=16",
        *TINY_FID,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = proc.stdout + proc.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 4 and ckpt["ImageDataModule"]["batch_size"] == 8  # 16 split over 2 ranks
    (wb,) = find_offline_runs(run / "wandb")  # rank zero alone logs
    fid = wb.values("val/fid_8_ddim3")
    assert len(fid) == 2 and all(math.isfinite(v) and v > 0 for v in fid)
    # the checkpoint of the lowest FID, written once, with the best value kept for resuming
    best = torch.load(run / "checkpoints" / "best_fid.ckpt", weights_only=False, map_location="cpu")
    assert best["global_step"] == (2, 4)[fid.index(min(fid))]
    assert best["callbacks"]["SampleFID"]["best"] == pytest.approx(min(fid), rel=1e-5)
    assert len(wb.values("val/samples/_type")) == 2
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]


def test_global_batch_that_does_not_split_is_one_sentence(run_train):
    proc = run_train("trainer.accelerator=cpu", "trainer.devices=2", "data.global_batch_size=15")
    assert proc.returncode == 2
    assert "data.global_batch_size=15 does not split evenly over 2 process(es)" in proc.stderr
    assert "Traceback" not in proc.stderr
