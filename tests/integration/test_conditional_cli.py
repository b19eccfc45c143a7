"""Class-conditional training with classifier-free guidance through the real CLI: train, sample, evaluate, refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.cli import TINY, evaluate_nll, run_script, train_tiny
from tests.helpers.wandb_files import find_offline_runs


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    proc = run_script(
        "train.py",
        *TINY,
        "condition=class",
        "diffusion=eps",  # the bound test below checks a sane bits/dim, which a 4-step x0 network does not have
        "logger=none",
        "callbacks.sample_grid.n=20",
        f"hydra.run.dir={root / 'run'}",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def test_a_conditional_run_stores_its_classes_and_draws_one_grid_row_per_class(conditional):
    ckpt = torch.load(conditional / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    config = ckpt["hyper_parameters"]["config"]
    assert config["model"]["num_classes"] == 10 and config["condition"]["name"] == "class"
    assert ckpt["state_dict"]["net.class_emb.weight"].shape[0] == 11  # ten classes and the null class
    grids = sorted((conditional / "samples").glob("step_*.png"))
    with Image.open(
        grids[-1]
    ) as png:  # 20 // 10 = 2 per class: 10 rows of 2 tiles of 28 px with 2 px padding
        assert png.size == (2 * 28 + 3 * 2, 10 * 28 + 11 * 2)


def test_sample_labels_all_and_a_list(conditional, tmp_path):
    ckpt = conditional / "checkpoints" / "last.ckpt"
    proc = run_script(
        "sample.py",
        f"ckpt_path={ckpt}",
        "labels=all",
        "per_class=3",
        "guidance=2.0",
        "sampler.steps=3",
        f"hydra.run.dir={tmp_path / 'all'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(tmp_path / "all" / "samples.npz")
    assert saved["images"].shape == (30, 28, 28, 1)
    assert saved["labels"].tolist() == [c for c in range(10) for _ in range(3)]
    with Image.open(tmp_path / "all" / "samples.png") as png:
        assert png.size == (3 * 28 + 4 * 2, 10 * 28 + 11 * 2)
    assert "each on the image and its unconditional twin (guidance 2)" in proc.stderr + proc.stdout

    proc = run_script(
        "sample.py",
        f"ckpt_path={ckpt}",
        "labels=[3,3,7]",
        "sampler.steps=3",
        f"hydra.run.dir={tmp_path / 'list'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(tmp_path / "list" / "samples.npz")["labels"].tolist() == [3, 3, 7]

    # no labels: the classes spread evenly over all n images, across batches
    proc = run_script(
        "sample.py",
        f"ckpt_path={ckpt}",
        "n=13",
        "batch_size=4",
        "sampler.steps=2",
        f"hydra.run.dir={tmp_path / 'spread'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(tmp_path / "spread" / "samples.npz")["labels"].tolist() == [k % 10 for k in range(13)]


def _refused(script, *args, cwd):
    proc = run_script(script, *args, f"hydra.run.dir={cwd / 'x'}", cwd=cwd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_bad_conditional_input_is_one_sentence(conditional, tmp_path):
    ckpt = conditional / "checkpoints" / "last.ckpt"
    assert "labels [10] are outside this model's classes 0..9" in _refused(
        "sample.py", f"ckpt_path={ckpt}", "labels=[3,10]", cwd=tmp_path
    )
    assert "guidance must be a finite number >= 0 (0: no guidance), got -1.0" in _refused(
        "sample.py", f"ckpt_path={ckpt}", "guidance=-1", cwd=tmp_path
    )


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_guidance_or_labels_on_an_unconditional_checkpoint_are_refused(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    ckpt = train_tiny(tmp_path)
    assert "needs a class-conditional checkpoint" in _refused(
        "sample.py", f"ckpt_path={ckpt}", "guidance=2", cwd=tmp_path
    )
    assert "needs a class-conditional checkpoint" in _refused(
        "sample.py", f"ckpt_path={ckpt}", "labels=all", cwd=tmp_path
    )
    assert "sweep.guidance=[0.0, 1.0] needs a class-conditional checkpoint" in _refused(
        "evaluate.py", f"ckpt_path={ckpt}", "metrics=[fid]", "sweep.guidance=[0,1]", cwd=tmp_path
    )


def test_condition_class_on_data_without_labels_is_refused(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    err = _refused(
        "train.py",
        *TINY,
        "condition=class",
        "data=image_folder",
        f"data.root={folder}",
        "data.channels=1",
        "data.image_size=28",
        "logger=none",
        cwd=tmp_path,
    )
    assert "have no classes" in err or "needs labelled data" in err


def test_the_guidance_sweep_reports_fid_kid_and_class_accuracy(
    conditional, tmp_path, fid_weights, monkeypatch
):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    ckpt = conditional / "checkpoints" / "last.ckpt"
    proc = run_script(
        "evaluate.py",
        f"ckpt_path={ckpt}",
        "metrics=[fid]",
        "fid.n=20",
        "fid.batch_size=20",
        "fid.reference_n=16",
        "sampler.steps=2",
        "sweep.guidance=[0,2]",
        "classifier.epochs=1",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "eval"
    results = json.loads((out / "metrics.json").read_text())
    rows = results["guidance_sweep"]["rows"]
    assert [r["guidance"] for r in rows] == [0.0, 2.0] and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert all(r["nfe"] == 2 and r["n"] == 20 for r in rows)
    assert 0 < results["classifier_held_out_accuracy"] <= 1
    md = (out / "guidance_table.md").read_text()
    assert (
        "| w | FID (N = 20) | KID × 10³ (± std over subsets, if they differ) | class accuracy |" in md
        and "held-out split it scores" in md
    )
    assert (
        len((out / "guidance_table.csv").read_text().splitlines()) == 3
        and (out / "guidance_plot.png").is_file()
    )
    (run,) = find_offline_runs(out)
    assert run.values("eval/guidance_table/nrows") == [2] and run.values("eval/guidance_plot/_type") == [
        "image-file"
    ]


def test_the_bound_of_a_conditional_checkpoint_uses_each_image_class(conditional, tmp_path):
    ckpt = conditional / "checkpoints" / "last.ckpt"
    nll = evaluate_nll(ckpt, tmp_path / "nll", cwd=tmp_path)
    assert nll["n"] == 4 and 0 < nll["total_bpd"] < 50


def test_a_conditional_network_without_labelled_batches_is_refused(tmp_path):
    err = _refused("train.py", *TINY, "model.num_classes=10", "logger=none", cwd=tmp_path)
    assert "the batches carry no labels: use condition=class" in err
