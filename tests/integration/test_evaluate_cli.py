"""The real `python evaluate.py` on a checkpoint from a real `python train.py callbacks=fid` run."""

from __future__ import annotations

import json
import math

from tests.helpers.cli import TINY, TINY_FID, run_script
from tests.helpers.wandb_files import find_offline_runs


def test_train_with_fid_then_evaluate(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_script(
        "train.py",
        *TINY,
        *TINY_FID,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = find_offline_runs(tmp_path / "run" / "wandb")
    assert len(run.values("val/fid_8_ddim3")) == 2 and run.values("val/samples/_type")

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = run_script(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        "sampler.steps=2",
        "fid.n=8",
        "fid.batch_size=4",
        "fid.reference_n=16",
        "nll.n=6",
        "nll.batch_size=4",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert results["fid"]["key"] == "fid_8_ddim2" and results["fid"]["n"] == 8
    assert math.isfinite(results["fid"]["value"]) and results["fid"]["value"] > 0
    assert results["fid"]["kid_key"] == "kid_8_ddim2" and math.isfinite(results["fid"]["kid"])
    assert results["fid"]["kid_std"] >= 0 and "kid_8_ddim2" in proc.stdout
    assert results["fid"]["reference"] == "mnist5k held-out split, 16 images"
    nll = results["nll"]
    assert nll["n"] == 6 and 0 < nll["prior_bpd"] < nll["total_bpd"] and nll["decoder_bpd"] > 0
    assert "NLL bits/dim" in proc.stdout and "fid_8_ddim2" in proc.stdout


def test_evaluate_bad_checkpoint_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    proc = run_script(
        "evaluate.py", f"ckpt_path={bad}", "metrics=[nll]", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path
    )
    assert proc.returncode == 2 and "could not be read" in proc.stderr and "Traceback" not in proc.stderr
