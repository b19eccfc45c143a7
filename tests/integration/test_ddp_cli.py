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
    # after the validations at steps 2 and 4, then at the end of training
    *fid, final = wb.values("val/fid_8_sde_dpm_solver_pp3")
    assert len(fid) == 2 and all(math.isfinite(v) and v > 0 for v in fid)
    assert final == fid[1]  # the end-of-training score: the step-4 weights again, from the same seeds
    # the checkpoint of the lowest FID, written once, with the best value kept for resuming
    best = torch.load(run / "checkpoints" / "best_fid.ckpt", weights_only=False, map_location="cpu")
    assert best["global_step"] == (2, 4)[fid.index(min(fid))]
    assert best["callbacks"]["SampleFID"]["best"] == pytest.approx(min(fid), rel=1e-5)
    assert len(wb.values("val/samples/_type")) == 2
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    # nothing counted twice or left out: the FID of the two ranks' shares equals that of the same 8 samples
    # (4 from seed 12345 + rank, per rank) scored in one process against the same 16 held-out images
    single_fid, single_kid = single_process_scores(run / "checkpoints" / "last.ckpt", fid_weights, tmp_path)
    assert fid[1] == pytest.approx(single_fid, rel=1e-3)
    # KID from the features gathered from both ranks, in rank order: the same subsets as in one process
    assert wb.values("val/kid_8_sde_dpm_solver_pp3")[1] == pytest.approx(single_kid, rel=1e-3, abs=1e-6)


def single_process_scores(ckpt, weights, tmp_path) -> tuple[float, float]:
    import hydra

    from ddpm.build import build_sampler
    from ddpm.checkpoint import load_checkpoint
    from ddpm.images import to_rgb_uint8
    from ddpm.metrics import install_reference, make_fid

    module, cfg = load_checkpoint(ckpt)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("validate")
    metric = make_fid(weights)
    install_reference(metric, datamodule, str(tmp_path / "cache"), 16, weights)
    sampler = build_sampler(module.diffusion, cfg.sampler)
    for rank in (0, 1):
        generator = torch.Generator().manual_seed(cfg.callbacks.fid.seed + rank)
        metric.update(to_rgb_uint8(module.sample(sampler, 4, generator=generator)), real=False)
    return metric.compute().item(), metric.kid()[0]


def test_global_batch_that_does_not_split_is_one_sentence(run_train):
    proc = run_train("trainer.accelerator=cpu", "trainer.devices=2", "data.global_batch_size=15")
    assert proc.returncode == 2
    assert "data.global_batch_size=15 does not split evenly over 2 process(es)" in proc.stderr
    assert "Traceback" not in proc.stderr
