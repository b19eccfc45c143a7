"""The real `python evaluate.py` on a checkpoint from a real `python train.py callbacks=fid` run."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers.cli import TINY, TINY_FID, run_script, train_tiny
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
    # validations at steps 2 and 4, and the end of training
    assert len(run.values("val/fid_8_sde_dpm_solver_pp3")) == 3 and run.values("val/samples/_type")

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
    assert results["fid"]["key"] == "fid_8_sde_dpm_solver_pp2" and results["fid"]["n"] == 8
    assert math.isfinite(results["fid"]["value"]) and results["fid"]["value"] > 0
    assert results["fid"]["kid_key"] == "kid_8_sde_dpm_solver_pp2" and math.isfinite(results["fid"]["kid"])
    # 8 samples against 16 references: subsets of 8 differ on the reference side, so there is a spread
    assert results["fid"]["kid_std"] >= 0 and "kid_8_sde_dpm_solver_pp2" in proc.stdout
    assert results["fid"]["reference"] == "mnist5k held-out split, 16 images"
    nll = results["nll"]
    assert nll["n"] == 6 and 0 < nll["prior_bpd"] < nll["total_bpd"] and nll["decoder_bpd"] > 0
    assert "NLL bits/dim" in proc.stdout and "fid_8_sde_dpm_solver_pp2" in proc.stdout


def test_evaluate_bad_checkpoint_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    proc = run_script(
        "evaluate.py", f"ckpt_path={bad}", "metrics=[nll]", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path
    )
    assert proc.returncode == 2 and "could not be read" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_the_quality_vs_nfe_sweep_writes_table_csv_plot_and_wandb(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    ckpt = train_tiny(tmp_path)
    common = [f"ckpt_path={ckpt}", "metrics=[fid]", "fid.n=8", "fid.batch_size=8", "fid.reference_n=16"]

    # a cell the sampler cannot run is refused before any sampling, in one sentence
    bad = run_script(
        "evaluate.py",
        *common,
        "sweep.samplers=[ddim,dpm_solver_pp]",
        "sweep.steps=[1,3]",
        f"hydra.run.dir={tmp_path / 'bad'}",
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert "sweep cell dpm_solver_pp with 1 steps" in bad.stderr and "needs at least 2 steps" in bad.stderr
    unknown = run_script(
        "evaluate.py",
        *common,
        "sweep.samplers=[ddim,heun]",
        f"hydra.run.dir={tmp_path / 'bad2'}",
        cwd=tmp_path,
    )
    assert unknown.returncode == 2 and "unknown sampler(s) ['heun'] in sweep.samplers" in unknown.stderr

    proc = run_script(
        "evaluate.py",
        *common,
        "sweep.samplers=[ddim,ddpm]",
        "sweep.steps=[1,3]",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "eval"
    rows = json.loads((out / "metrics.json").read_text())["sweep"]["rows"]
    assert [(r["sampler"], r["steps"], r["nfe"], r["n"]) for r in rows] == [
        ("ddim", 1, 1, 8),
        ("ddim", 3, 3, 8),
        ("ddpm", 1, 1, 8),
        ("ddpm", 3, 3, 8),
    ]
    # one step from x_T is the data prediction at t = 1 for both samplers: same seeds, so the very same images
    assert rows[0]["fid"] == rows[2]["fid"] and rows[0]["kid"] == rows[2]["kid"]
    assert rows[1]["fid"] != rows[3]["fid"]  # ...and DDPM's fresh noise makes 3 steps differ
    assert all(r["seconds_per_image"] > 0 and math.isfinite(r["fid"]) for r in rows)

    lines = (out / "nfe_table.csv").read_text().splitlines()
    assert lines[0] == "sampler,steps,nfe,fid,kid,kid_std,seconds_per_image,n" and len(lines) == 5
    md = (out / "nfe_table.md").read_text()
    assert "| sampler | 1 | 3 |" in md and "| ddim |" in md and "| ddpm |" in md and "FID (N = 8)" in md
    assert "the same 8 seeds" in md and "ddpm, 3 calls: FID / KID (N = 8)" in proc.stdout
    from PIL import Image

    with Image.open(out / "nfe_plot.png") as png:
        assert png.size[0] > 400
    (run,) = find_offline_runs(out)
    assert run.values("eval/nfe_table/_type") == ["table-file"] and run.values("eval/nfe_plot/_type") == [
        "image-file"
    ]
    assert run.values("eval/nfe_table/nrows") == [4] and run.values("eval/nfe_table/ncols") == [8]
    files = run.path.parent / "files"
    table = json.loads((files / run.values("eval/nfe_table/path")[0]).read_text())
    assert table["columns"][:4] == ["sampler", "steps", "nfe", "fid"]
    assert [row[:4] for row in table["data"]] == [
        [r["sampler"], r["steps"], r["nfe"], r["fid"]] for r in rows
    ]
    assert any("nfe_plot" in p.name for p in run.media)


@pytest.mark.slow  # two evaluations with Inception features
def test_fid_against_the_training_split(tmp_path, fid_weights, monkeypatch):
    """fid.reference_split=train (the paper's CIFAR-10 protocol) scores against training images; another value is
    one sentence."""
    from tests.helpers.paths import LEGACY

    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    common = [f"ckpt_path={LEGACY / 'tiny.ckpt'}", "metrics=[fid]", "sampler=ddim", "sampler.steps=2"]
    common += ["fid.n=8", "fid.reference_n=16", f"fid.cache_dir={tmp_path / 'cache'}"]
    bad = run_script(
        "evaluate.py", *common, "fid.reference_split=test", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path
    )
    assert bad.returncode == 2 and "fid.reference_split='test': choose held_out or train" in bad.stderr
    scores = {}
    for split in ("train", "held_out"):
        out = tmp_path / split
        proc = run_script(
            "evaluate.py", *common, f"fid.reference_split={split}", f"hydra.run.dir={out}", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        scores[split] = json.loads((out / "metrics.json").read_text())["fid"]
    assert scores["train"]["reference"] == "mnist5k training split (unflipped), 16 images"
    assert scores["held_out"]["reference"] == "mnist5k held-out split, 16 images"
    assert scores["train"]["value"] != scores["held_out"]["value"]  # the same samples, another reference
    cached = sorted(p.name.split("-n16-")[0] for p in (tmp_path / "cache").glob("*.pt"))
    assert cached == ["mnist5k-held_out", "mnist5k-train"]
