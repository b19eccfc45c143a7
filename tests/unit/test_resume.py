"""Resuming from a mid-epoch checkpoint continues exactly: same data, same noise, same weights as no interruption."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ddpm.build import build_module
from ddpm.config import compose_config
from ddpm.data.datamodule import EpochSampler
from ddpm.errors import ConfigError
from tests.helpers.cli import TINY
from tests.helpers.paths import ROOT


class RecordBatches(L.Callback):
    """Keeps a fingerprint of every training batch and the loss of every step."""

    def __init__(self):
        self.batches, self.losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(float(batch[0].double().sum()))
        self.losses.append(float(outputs["loss"]))


def _fit(tmp_path, max_steps, ckpt_path=None, every_n_train_steps=1, callbacks=()):
    # the first segment is cut short by a smaller max_steps, which would move a decay tied to max_steps: a constant
    # rate here (the real CLI resumes in test_resume_cli keep max_steps, and the default cosine decay)
    overrides = [*TINY, "logger=none", f"trainer.max_steps={max_steps}", "optim.decay=constant"]
    cfg = compose_config(ROOT / "conf", "train", overrides, tmp_path)
    L.seed_everything(cfg.seed)
    module = build_module(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    record = RecordBatches()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps
    )
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[record, ckpt, *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, trainer, record


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path):
    full, _, full_rec = _fit(tmp_path / "full", 6)
    _, _, first_rec = _fit(tmp_path / "a", 3)
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 3 and saved["ImageDataModule"]["batches"] == 3
    resumed, trainer, second_rec = _fit(tmp_path / "b", 6, ckpt_path=str(last))

    assert trainer.global_step == 6
    assert first_rec.batches + second_rec.batches == full_rec.batches  # the data position was restored
    assert first_rec.losses + second_rec.losses == pytest.approx(full_rec.losses, rel=1e-5)  # t and eps too
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(
            a, b, rtol=1e-5, atol=1e-6, msg=name
        )  # weights, EMA: optimizer and LR schedule


def test_epoch_sampler_deals_each_epoch_once_across_ranks_and_resumes():
    ranks = [list(EpochSampler(10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 3 for r in ranks) and len(set(sum(ranks, []))) == 9  # disjoint, equal shares
    s = EpochSampler(10, seed=1)
    epoch0 = list(s)
    s.set_epoch(1)
    assert list(s) != epoch0  # a new order each epoch
    s.resume(epoch=1, start=4)
    assert list(s) == _epoch(1)[4:]
    assert len(list(s)) == 10  # the skip applies to one pass only


def _epoch(epoch):
    s = EpochSampler(10, seed=1)
    s.set_epoch(epoch)
    return list(s)


def test_global_batch_size_is_split_over_devices():
    from ddpm.data import ImageDataModule

    dm = ImageDataModule(global_batch_size=128)
    assert dm.configure_batch(world_size=4) == 32
    assert dm.configure_batch(world_size=2, accumulate_grad_batches=2) == 32
    with pytest.raises(ConfigError, match="does not split evenly over 3 process"):
        dm.configure_batch(world_size=3)
    assert (
        ImageDataModule(batch_size=64).configure_batch(world_size=4) == 64
    )  # per-device when no global size


def test_training_noise_differs_per_rank_step_and_micro_batch():
    from ddpm.training.module import noise_key

    keys = {noise_key(42, r, s, m) for r in range(4) for s in range(1000) for m in range(4)}
    assert len(keys) == 4 * 1000 * 4
    draws = {
        torch.randn(3, generator=torch.Generator().manual_seed(noise_key(42, r, 7))).sum().item()
        for r in range(4)
    }
    assert len(draws) == 4  # each rank draws different eps at the same step


def test_optimized_metric_is_found_by_name_or_prefix():
    from ddpm.cli.sweep_job import optimized_value

    metrics = {"val/loss": torch.tensor(0.5), "val/fid_8_ddim2": torch.tensor(40.0)}
    assert optimized_value(metrics, "val/loss") == 0.5
    assert optimized_value(metrics, "val/fid") == 40.0
    assert optimized_value(metrics, "val/nll") is None  # a single run only warns; a sweep stops (ConfigError)


def test_a_restarted_run_resumes_from_the_newest_checkpoint_in_its_own_folder(tmp_path):
    import os

    from omegaconf import OmegaConf

    from ddpm.cli.train import resume_path

    cfg = OmegaConf.create(
        {
            "ckpt_path": None,
            "task_name": "train",
            "paths": {"output_dir": str(tmp_path), "log_dir": str(tmp_path)},
        }
    )
    assert resume_path(cfg) is None  # a fresh run folder: start from scratch
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert resume_path(cfg) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM requeue checkpoint, written after last.ckpt
    hpc.write_bytes(b"x")
    os.utime(last, (1, 1))
    assert resume_path(cfg) == str(hpc)
    cfg.ckpt_path = "/given.ckpt"
    assert resume_path(cfg) == "/given.ckpt"


def test_a_checkpoint_that_does_not_fit_is_named_by_its_first_difference():
    from ddpm.checkpoint import state_dict_mismatch

    model = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    assert state_dict_mismatch(model, {k: v.clone() for k, v in model.items()}) is None
    assert state_dict_mismatch(model, {"a.weight": torch.zeros(4, 3)}) == "1 missing key(s), e.g. a.bias"
    extra = state_dict_mismatch(model, {**model, "b.weight": torch.zeros(1)})
    assert extra == "1 unexpected key(s), e.g. b.weight"
    wrong = state_dict_mismatch(model, {"a.weight": torch.zeros(8, 3), "a.bias": torch.zeros(4)})
    assert wrong == "size mismatch for a.weight: (8, 3) in the checkpoint, (4, 3) in the model"


def test_the_resume_check_reads_shapes_only_and_leaves_the_weights_to_the_trainer(tmp_path):
    from ddpm.checkpoint import check_resume

    _fit(tmp_path / "a", 2)
    last = tmp_path / "a" / "ckpt" / "last.ckpt"
    cfg = compose_config(ROOT / "conf", "train", [*TINY, "logger=none", "optim.decay=constant"], tmp_path)
    fresh = build_module(cfg)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert check_resume(fresh, last, cfg) == 2  # fits: no error, the step, and nothing loaded
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed
    other_cfg = compose_config(
        ROOT / "conf", "train", [*TINY, "logger=none", "model.base_channels=16"], tmp_path
    )
    with pytest.raises(ConfigError, match="model.base_channels 8 in the checkpoint, 16 now"):
        check_resume(build_module(other_cfg), last, other_cfg)


def test_changed_settings_name_what_defines_the_model_and_nothing_else():
    from ddpm.checkpoint import changed_settings

    stored = {
        "model": {"base_channels": 32, "channels_last": True, "num_classes": None},
        "schedule": {"name": "linear", "num_timesteps": 1000, "beta_end": 0.02},
        "diffusion": {"objective": "x0", "var_type": "fixed_large", "self_condition": False},
        "recipe": {"t_sampling": "lognormal", "stf_reference": 1024},
        "optim": {"lr": 1e-3},
    }
    same = {k: dict(v) for k, v in stored.items()}
    assert changed_settings(stored, same) == []
    free = {**same, "optim": {"lr": 5e-4}, "model": {**same["model"], "channels_last": False}}
    free["recipe"] = {"t_sampling": "uniform", "stf_reference": 0}  # the recipe may change, the process not
    assert changed_settings(stored, free) == []
    changed = {
        **same,
        "model": {**same["model"], "num_classes": 10},
        "schedule": {**same["schedule"], "beta_end": 0.01},
        "diffusion": {**same["diffusion"], "var_type": "fixed_small"},
    }
    assert changed_settings(stored, changed) == [
        "model.num_classes None in the checkpoint, 10 now",
        "schedule.beta_end 0.02 in the checkpoint, 0.01 now",
        "diffusion.var_type 'fixed_large' in the checkpoint, 'fixed_small' now",
    ]
    # a setting the checkpoint's config predates is not a change; one the run drops is
    assert changed_settings({"model": {}}, {"model": {"scale_shift_norm": False}}) == []
    assert changed_settings({"model": {"dropout": 0.1}}, {"model": {}}) == [
        "model.dropout 0.1 in the checkpoint, 'unset' now"
    ]
    # ...unless the run now asks for other than what the older code did: the default of the class the node builds
    # (a checkpoint of the paper's network from before tf_padding ran with padding on every side)
    older = {"model": {"_target_": "ddpm.models.UNet", "base_channels": 128}}
    assert changed_settings(older, {"model": {**older["model"], "tf_padding": False}}) == []
    assert changed_settings(older, {"model": {**older["model"], "tf_padding": True}}) == [
        "model.tf_padding False (unset, the default then) in the checkpoint, True now"
    ]


class RecordSaves(L.Callback):
    def __init__(self):
        self.steps = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.steps.append(trainer.global_step)


@pytest.mark.parametrize(("max_steps", "saved_at"), [(4, [2, 4]), (5, [2, 4, 5])])
def test_last_checkpoint_is_written_at_the_end_once(tmp_path, max_steps, saved_at):
    from ddpm.training import LastCheckpoint

    saves = RecordSaves()
    last = LastCheckpoint(dirpath=str(tmp_path / "ckpt"))
    _fit(tmp_path, max_steps, every_n_train_steps=2, callbacks=[saves, last])
    assert (
        saves.steps == saved_at
    )  # at the end: by ModelCheckpoint if it saved at that step, else by LastCheckpoint
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == max_steps
