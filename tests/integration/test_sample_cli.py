"""The real `python sample.py` on a checkpoint from a real (tiny) `python train.py` run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.cli import evaluate_nll, run_script, sample_images, train_tiny


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # an eps network: after 4 steps an x0 network (the CPU default) predicts a near-constant x_0, so the
    # deterministic samplers' images would all be one grey, and seeds could not be told apart
    return train_tiny(tmp_path_factory.mktemp("train"), "diffusion=eps")


@pytest.mark.parametrize("sampler,steps", [("ddim", 4), ("ddpm", 5), ("dpm_solver_pp", 4), ("unipc", 4)])
def test_sample_writes_grid_and_npz(checkpoint, tmp_path, sampler, steps):
    proc = run_script(
        "sample.py",
        f"ckpt_path={checkpoint}",
        f"sampler={sampler}",
        f"sampler.steps={steps}",
        "n=6",
        "batch_size=4",
        f"hydra.run.dir={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = np.load(tmp_path / "out" / "samples.npz")["images"]
    assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
    with Image.open(tmp_path / "out" / "samples.png") as png:
        assert png.size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)
        grid = np.asarray(png.convert("RGB"))
    # the .npz holds exactly the PNG's bytes: tile k of the 3-wide grid starts at 2 + 30 * (row, col)
    assert images.std() > 0
    for k in range(6):
        row, col = divmod(k, 3)
        tile = grid[2 + 30 * row : 30 + 30 * row, 2 + 30 * col : 30 + 30 * col]
        assert np.array_equal(tile, np.repeat(images[k], 3, axis=2)), k


def test_sampling_is_reproducible_from_the_seed(checkpoint, tmp_path):
    outs = []
    for name in ("a", "b"):
        proc = run_script(
            "sample.py",
            f"ckpt_path={checkpoint}",
            "sampler.steps=3",
            "n=2",
            f"hydra.run.dir={tmp_path / name}",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(np.load(tmp_path / name / "samples.npz")["images"])
    assert np.array_equal(outs[0], outs[1])


def _bad(tmp_path, ckpt, *overrides: str) -> str:
    proc = run_script(
        "sample.py", f"ckpt_path={ckpt}", "n=2", *overrides, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_missing_checkpoint(tmp_path):
    assert "does not exist: set ckpt_path to a .ckpt file written by train.py" in _bad(
        tmp_path, tmp_path / "x.ckpt"
    )


def test_corrupt_checkpoint(checkpoint, tmp_path):
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(checkpoint.read_bytes()[:5000])
    assert "could not be read" in _bad(tmp_path, bad) and "corrupt" in _bad(tmp_path, bad)


def test_mismatched_checkpoint(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["hyper_parameters"]["config"]["model"]["base_channels"] = 16
    bad = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, bad)
    assert "does not match the model described by its own config" in _bad(tmp_path, bad)


def test_ckpt_path_is_required(tmp_path):
    proc = run_script("sample.py", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2 and "these config values must be set: ckpt_path" in proc.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["sampler.name=heun"],
            "error: unknown sampler 'heun': choose one of ddpm, ddim, dpm_solver_pp, sde_dpm_solver_pp, unipc",
        ),
        (["sampler.steps=0"], "error: sampler.steps must be at least 1, got 0"),
        (["sampler=unipc", "sampler.steps=101"], "sampler steps must be between 1 and T=100, got 101"),
        (
            ["sampler=dpm_solver_pp", "sampler.steps=1"],
            "dpm_solver_pp of order 2 needs at least 2 steps, got steps=1",
        ),
    ],
)
def test_a_bad_sampler_is_one_sentence_before_sampling(checkpoint, tmp_path, overrides, message):
    assert message in _bad(tmp_path, checkpoint, *overrides)
    assert not (tmp_path / "out" / "samples.npz").exists()


@pytest.fixture(scope="module")
def learned_variance_checkpoint(tmp_path_factory):
    # Nichol & Dhariwal's setting: an eps network that learns its variance (an x0 network trained for 4 steps has
    # a bound in the thousands of bits/dim: its eps error at t = 1 is amplified by 1 / sqrt(1 - alphabar_1) ~ 100)
    return train_tiny(
        tmp_path_factory.mktemp("train_learned"), "diffusion=eps", "diffusion.var_type=learned_range"
    )


def test_a_learned_variance_run_trains_samples_and_evaluates_its_bound(learned_variance_checkpoint, tmp_path):
    ckpt = torch.load(learned_variance_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]["net.conv_out.weight"].shape[0] == 2  # one image channel, one variance channel
    for sampler in ("sampler=ddpm", "sampler=dpm_solver_pp"):
        images = sample_images(
            learned_variance_checkpoint,
            tmp_path / sampler[8:],
            sampler,
            "sampler.steps=5",
            "n=2",
            cwd=tmp_path,
        )
        assert images.shape == (2, 28, 28, 1)
    nll = evaluate_nll(learned_variance_checkpoint, tmp_path / "eval", cwd=tmp_path)
    assert 0 < nll["total_bpd"] < 50


def test_a_learned_variance_checkpoint_refuses_a_fixed_variance_sampler(
    learned_variance_checkpoint, tmp_path
):
    err = _bad(tmp_path, learned_variance_checkpoint, "sampler=ddpm", "sampler.var_type=fixed_small")
    assert "does not fit this model, whose reverse variance is learned_range" in err
    assert "leave the sampler's var_type unset" in err


def test_a_fixed_variance_checkpoint_refuses_a_learned_variance_sampler(checkpoint, tmp_path):
    err = _bad(tmp_path, checkpoint, "sampler=ddpm", "sampler.var_type=learned_range")
    assert "its network predicts no variance" in err


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_a_self_conditioned_run_trains_samples_and_evaluates_its_bound(tmp_path):
    ckpt_path = train_tiny(tmp_path, "diffusion=eps", "diffusion.self_condition=true")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]["net.conv_in.weight"].shape[1] == 2  # the image and its x_0 estimate
    images = sample_images(ckpt_path, tmp_path / "sample", "sampler.steps=5", "n=2", cwd=tmp_path)
    assert images.shape == (2, 28, 28, 1)
    nll = evaluate_nll(ckpt_path, tmp_path / "eval", cwd=tmp_path)
    assert 0 < nll["prior_bpd"] < nll["total_bpd"] < 50
