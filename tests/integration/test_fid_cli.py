"""FID in the validation loop of a real `python train.py callbacks=fid` run, read back from the W&B offline files."""

from __future__ import annotations

import math

from tests.helpers.cli import TINY_FID
from tests.helpers.wandb_files import find_offline_runs


def test_validation_fid_is_logged_to_wandb(run_train, tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_train(
        *TINY_FID,
        "trainer.max_steps=2",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = find_offline_runs(tmp_path / "run" / "wandb")
    values = run.values("val/fid_8_dpm_solver_pp3")
    assert len(values) == 1 and math.isfinite(values[0]) and values[0] > 0
    kid, kid_std = (
        run.values("val/kid_8_dpm_solver_pp3"),
        run.values("val/kid_std_8_dpm_solver_pp3"),
    )  # KID beside, same pass
    assert len(kid) == 1 and math.isfinite(kid[0]) and len(kid_std) == 1 and kid_std[0] >= 0
    assert run.values("val/samples/_type")  # the grid is logged alongside
    cached = list((tmp_path / ".cache" / "fid").glob("mnist5k-held_out-n16-*.pt"))
    assert len(cached) == 1  # reference statistics cached under the run root


def test_missing_fid_weights_stop_before_training(run_train, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", str(tmp_path / "missing.pth"))
    proc = run_train("callbacks=fid")
    assert proc.returncode == 2 and "FID Inception weights" in proc.stderr and "do not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "wandb").exists()
