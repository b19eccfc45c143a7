"""The real `python export.py` and `python import.py`: a checkpoint becomes a diffusers pipeline folder that a plain
Python session loads and samples from, the folder becomes a checkpoint again (the same weights) that sample.py and
evaluate.py take, and a folder that is not a DDPM pipeline is one sentence."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests.helpers.cli import run_script, sample_images
from tests.helpers.paths import LEGACY, ROOT

CKPT = LEGACY / "tiny.ckpt"  # a checkpoint of older code: 28x28 digits, eps, T = 100


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The legacy checkpoint exported once, for the tests that break a copy of it."""
    tmp = tmp_path_factory.mktemp("exported")
    proc = export(tmp, f"ckpt_path={CKPT}", f"out={tmp / 'pipe'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "pipe"


def export(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return run_script("export.py", *overrides, f"hydra.run.dir={tmp_path / 'export_run'}", cwd=tmp_path)


def import_(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return run_script("import.py", *overrides, f"hydra.run.dir={tmp_path / 'import_run'}", cwd=tmp_path)


def test_export_loads_in_diffusers_and_imports_back_to_the_same_weights(tmp_path):
    # the docs' picture script: python export.py, then diffusers alone (DDPMPipeline.from_pretrained) draws a grid
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "diffusers_samples.py"), str(CKPT), "--n", "4"]
        + ["--out", str(tmp_path / "grid.png"), "--pipeline", str(tmp_path / "pipe")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 samples of DDPMPipeline (100 steps" in proc.stdout
    assert "import ddpm" not in (ROOT / "docs" / "diffusers_samples.py").read_text()  # diffusers alone
    files = {
        p.relative_to(tmp_path / "pipe").as_posix() for p in (tmp_path / "pipe").rglob("*") if p.is_file()
    }
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"} <= files
    assert "scheduler/scheduler_config.json" in files
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * 2 * 30, 3 * 2 * 30)  # 2 x 2 digits of 28 pixels and a 2-pixel frame, 3x

    proc = import_(tmp_path, f"source={tmp_path / 'pipe'}", f"out={tmp_path / 'back.ckpt'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = torch.load(CKPT, map_location="cpu", weights_only=False)
    after = torch.load(tmp_path / "back.ckpt", map_location="cpu", weights_only=False)
    ema = {k: v for k, v in before["state_dict"].items() if k.startswith("ema.module.")}
    assert ema and all(torch.equal(after["state_dict"][k], v) for k, v in ema.items())
    net = {k.replace("ema.module.", "net."): v for k, v in ema.items()}  # the import's raw weights: the EMA's
    assert all(torch.equal(after["state_dict"][k], v) for k, v in net.items())
    config = after["hyper_parameters"]["config"]
    assert config["data"]["source"] == "mnist5k" and config["diffusion"]["objective"] == "eps"

    images = sample_images(tmp_path / "back.ckpt", tmp_path / "samples", "n=4", "sampler=ddim", cwd=tmp_path)
    assert images.shape == (4, 28, 28, 1)

    # the data option can be named (what evaluate.py scores against): `dataset`, since `data` names the group
    proc = import_(tmp_path, f"source={tmp_path / 'pipe'}", f"out={tmp_path / 'm.ckpt'}", "dataset=mnist")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"][
        "config"
    ]
    assert config["data"]["source"] == "mnist" and config["model"]["base_channels"] == 8


@pytest.mark.parametrize(
    "break_it,message",
    [
        (lambda pipe: (pipe / "unet" / "config.json").unlink(), "unet/config.json is missing"),
        pytest.param(
            lambda pipe: (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64),
            "could not be read",
            marks=pytest.mark.slow,
        ),
        (
            lambda pipe: (pipe / "unet" / "config.json").write_text(
                json.dumps({"_class_name": "UNet2DConditionModel"})
            ),
            "holds a UNet2DConditionModel, not a UNet2DModel",
        ),
        pytest.param(
            lambda pipe: (pipe / "scheduler" / "scheduler_config.json").write_text("{not json"),
            "is not valid JSON",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_corrupt_or_foreign_folder_is_one_sentence(exported, tmp_path, break_it, message):
    shutil.copytree(exported, tmp_path / "pipe")
    break_it(tmp_path / "pipe")
    proc = import_(tmp_path, f"source={tmp_path / 'pipe'}", f"out={tmp_path / 'x.ckpt'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message in proc.stderr and proc.stderr.startswith("error: ")
    assert not (tmp_path / "x.ckpt").exists()


def test_export_refuses_an_occupied_folder_and_a_bad_checkpoint(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    proc = export(tmp_path, f"ckpt_path={CKPT}", f"out={tmp_path / 'full'}")
    assert proc.returncode == 2 and "already exists: choose another out= folder" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]
    proc = export(tmp_path, f"ckpt_path={tmp_path / 'none.ckpt'}", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not (tmp_path / "o").exists()
    proc = import_(tmp_path, f"source={tmp_path / 'nowhere'}", f"out={tmp_path / 'x.ckpt'}")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
