"""Checkpoints written by older code (tests/data/legacy_v1: before the application layer) still load and sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm.checkpoint import load_checkpoint
from tests.helpers.cli import run_script
from tests.helpers.paths import LEGACY

CKPT = LEGACY / "tiny.ckpt"


def test_a_legacy_checkpoint_loads_with_its_weights():
    module, cfg = load_checkpoint(CKPT)
    assert "compile" in cfg.model  # the old layout: compile was a model key, which the UNet does not take
    assert module.diffusion.num_timesteps == 100
    saved = torch.load(CKPT, map_location="cpu", weights_only=False)["state_dict"]
    loaded = module.state_dict()
    assert set(loaded) == set(saved) and any(k.startswith("ema.") for k in saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize(
    "sampler,reference",
    [
        (["sampler=ddim", "sampler.steps=5"], "samples_ddim5_seed7.npz"),
        (["sampler=ddpm"], "samples_ddpm100_seed7.npz"),
        (
            ["sampler=ddpm", "sampler.steps=10", "sampler.var_type=fixed_small"],
            "samples_ddpm10_fixed_small_seed7.npz",
        ),
    ],
)
def test_a_legacy_checkpoint_samples_what_the_old_code_sampled(tmp_path, sampler, reference):
    proc = run_script(
        "sample.py", f"ckpt_path={CKPT}", *sampler, "n=4", "seed=7", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = np.load(tmp_path / "samples.npz")["images"].astype(int)
    old = np.load(LEGACY / reference)["images"].astype(int)
    assert ours.shape == old.shape == (4, 28, 28, 1)
    # same code path, same noise: equal bytes, up to a rare rounding flip where another CPU's kernels differ in
    # the last float bit
    diff = np.abs(ours - old)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_a_run_config_from_before_the_recipe_group_builds_the_same_recipe():
    """Run configs written before `recipe` was its own group carry the recipe's keys in `diffusion`: a checkpoint of
    such a run rebuilds the process and the recipe it trained with."""
    from omegaconf import OmegaConf

    from ddpm.build import build_module
    from ddpm.config import compose_config

    now = OmegaConf.to_container(
        compose_config(overrides=["recipe.loss_weight=min_snr", "recipe.snr_gamma=2.0"])
    )
    old = {**now, "diffusion": {**now["diffusion"], **now["recipe"]}}
    del old["recipe"]
    module = build_module(OmegaConf.create(old))
    assert (module.diffusion.objective, module.diffusion.var_type) == ("x0", "fixed_large")
    recipe = module.recipe
    assert (recipe.t_sampling, recipe.log_sigma_mean, recipe.log_sigma_std) == ("lognormal", 0.5, 1.5)
    assert (recipe.loss_weight, module.stable_target.size) == ("min_snr", 1024)
    assert torch.equal(recipe.loss_weights, build_module(OmegaConf.create(now)).recipe.loss_weights)
