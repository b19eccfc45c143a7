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
    # after the validation at step 2, and again when training ends (the same weights and seeds: the same values)
    values = run.values("val/fid_8_sde_dpm_solver_pp3")
    assert len(values) == 2 and math.isfinite(values[0]) and values[0] > 0 and values[1] == values[0]
    kid, kid_std = (
        run.values("val/kid_8_sde_dpm_solver_pp3"),
        run.values("val/kid_std_8_sde_dpm_solver_pp3"),
    )  # KID beside, same pass
    assert len(kid) == 2 and math.isfinite(kid[0]) and len(kid_std) == 2 and kid_std[0] >= 0
    assert run.values("val/samples/_type")  # the grid is logged alongside
    cached = list((tmp_path / ".cache" / "fid").glob("mnist5k-held_out-n16-*.pt"))
    assert len(cached) == 1  # reference statistics cached under the run root


def test_missing_fid_weights_stop_before_training(run_train, tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", str(tmp_path / "missing.pth"))
    proc = run_train("callbacks=fid")
    assert proc.returncode == 2 and "FID Inception weights" in proc.stderr and "do not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "wandb").exists()


def test_the_default_run_reports_fid_and_kid_when_training_ends(
    run_train, tmp_path, fid_weights, monkeypatch
):
    """No callbacks=fid: the default callbacks score the final EMA weights once, at the end, into W&B, the closing
    summary and (with max_time ending the run between validations) still at the last step."""
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_train("trainer.max_steps=3", "trainer.val_check_interval=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = find_offline_runs(tmp_path / "run" / "wandb")
    assert run.values("val/loss") and len(run.values("val/loss")) == 1  # one validation, at step 2
    fid, kid = run.values("val/fid_8_sde_dpm_solver_pp3"), run.values("val/kid_8_sde_dpm_solver_pp3")
    assert len(fid) == len(kid) == 1 and fid[0] > 0 and math.isfinite(kid[0])
    assert run.summary["val/fid_8_sde_dpm_solver_pp3"] == fid[0]
    assert run.summary["trainer/global_step"] == 3  # logged at the last step, after the last validation
    summary = proc.stdout + proc.stderr
    assert (
        f"val/fid_8_sde_dpm_solver_pp3 {fid[0]:.4g}" in summary and "val/kid_8_sde_dpm_solver_pp3" in summary
    )


def test_without_local_weights_the_default_run_skips_the_final_fid_and_says_so(
    run_train, tmp_path, monkeypatch
):
    monkeypatch.delenv("DDPM_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no hub cache: nothing local
    proc = run_train("trainer.max_steps=2", "logger=none")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert "no FID / KID at the end of training: no local Inception weights (set $DDPM_FID_WEIGHTS" in out
    assert "val/fid" not in out and not (tmp_path / ".cache" / "fid").exists()
