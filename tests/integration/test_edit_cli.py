"""The real `python sample.py task=inpaint|img2img|interpolate` on a checkpoint, and its input mistakes as one
sentence before any network call."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.helpers.cli import run_script
from tests.helpers.paths import LEGACY

CKPT = LEGACY / "tiny.ckpt"  # 28x28 digits, T = 100


def edit(tmp_path, *overrides: str):
    out = tmp_path / "out"
    proc = run_script(
        "sample.py",
        f"ckpt_path={CKPT}",
        "sampler=ddim",
        "sampler.steps=10",
        *overrides,
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    return proc, out


def test_inpainting_keeps_the_known_pixels_and_writes_a_grid(tmp_path):
    proc, out = edit(tmp_path, "task=inpaint", "n=3", "mask=center", "jump_length=2", "jump_n_sample=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(out / "inpaint.npz")
    images, inputs = saved["images"], saved["inputs"]
    assert images.shape == inputs.shape == (3, 28, 28, 1)
    known = np.ones((28, 28), dtype=bool)
    known[7:21, 7:21] = False  # the centre: the middle half of each side
    assert (images[:, known] == inputs[:, known]).all() and (images[:, ~known] != inputs[:, ~known]).any()
    with Image.open(out / "inpaint.png") as grid:
        assert grid.size[1] > 3 * 28  # three rows: original, masked, filled


def test_img2img_at_strength_0_returns_the_input_and_interpolate_makes_a_row(tmp_path):
    proc, out = edit(tmp_path, "task=img2img", "n=2", "strength=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(out / "img2img.npz")
    assert (saved["images"] == saved["inputs"]).all()
    (tmp_path / "i").mkdir()
    proc, out = edit(tmp_path / "i", "task=interpolate", "frames=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(out / "interpolate.npz")["images"].shape == (5, 28, 28, 1)
    (tmp_path / "s").mkdir()
    proc, out = edit(tmp_path / "s", "task=interpolate", "images=seeds", "frames=3", "seed=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = np.load(out / "interpolate.npz")["images"]
    plain, _ = edit(tmp_path / "s", "n=1", "seed=4")  # sample.py from seed 4 draws the first end
    assert plain.returncode == 0, plain.stderr[-3000:]
    first = np.load(tmp_path / "s" / "out" / "samples.npz")["images"][0].astype(int)
    assert row.shape == (3, 28, 28, 1)
    # the same start and the same deterministic chain, in a batch of 3 against 1: equal up to a rare last-bit flip
    diff = np.abs(first - row[0].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_images_from_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    proc, out = edit(tmp_path, "task=img2img", "strength=0", f"images={tmp_path / 'imgs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs = np.load(out / "img2img.npz")["inputs"]
    assert inputs.shape == (2, 28, 28, 1)
    assert (inputs[0, ..., 0] == np.asarray(Image.open(tmp_path / "imgs" / "0.png"))).all()


def write_npz(path, shape):
    np.savez(path, images=np.zeros(shape, dtype=np.uint8))
    return path


@pytest.mark.parametrize(
    "make,overrides,message",
    [
        pytest.param(
            lambda p: None,
            ["task=inpaint", "mask=/no/such.png"],
            "not center, left, random or a mask image",
            marks=pytest.mark.slow,
        ),
        (
            lambda p: Image.new("L", (10, 10)).save(p / "m.png"),
            ["task=inpaint", "mask={p}/m.png"],
            "the mask {p}/m.png is 10x10; the images are 28x28",
        ),
        (
            lambda p: write_npz(p / "x.npz", (2, 32, 32, 3)),
            ["task=img2img", "images={p}/x.npz"],
            "have shape (32, 32, 3); this checkpoint's are (28, 28, 1)",
        ),
        (
            lambda p: None,
            ["task=img2img", "images={p}/nowhere"],
            "not held_out, a folder of images or an .npz",
        ),
        pytest.param(
            lambda p: None,
            ["task=img2img", "strength=1.5"],
            "strength must be in [0, 1]",
            marks=pytest.mark.slow,
        ),
        (lambda p: None, ["task=paint"], "task='paint': choose one of sample, inpaint, img2img, interpolate"),
    ],
)
def test_bad_input_is_one_sentence_before_sampling(tmp_path, make, overrides, message):
    make(tmp_path)
    proc, out = edit(tmp_path, *(o.format(p=tmp_path) for o in overrides))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message.format(p=tmp_path) in proc.stderr
    assert not list(out.glob("*.npz"))
