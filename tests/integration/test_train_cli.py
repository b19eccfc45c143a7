"""The real `python train.py` through Hydra, W&B offline; the run's files are read back."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from PIL import Image

from tests.helpers.wandb_files import find_offline_runs


def _ok(proc):
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def test_default_train_writes_checkpoint_grids_and_wandb_run(run_train, tmp_path):
    _ok(run_train())
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 4
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"]) and ckpt["optimizer_states"]
    assert ckpt["hyper_parameters"]["config"]["schedule"]["name"] == "linear"

    grids = sorted((run / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    with Image.open(grids[-1]) as img:
        assert img.size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)  # 2x2 grid of 28px images, 2px padding

    (wb,) = find_offline_runs(run / "wandb")
    assert {"train/loss", "val/loss", "lr-AdamW", "train/ema_decay", "trainer/global_step"} <= wb.history_keys
    assert len(wb.values("val/samples/_type")) == 2
    assert all(loss > 0 for loss in wb.values("train/loss"))
    # quality can be plotted against compute: images seen (batch 8 x steps 2, 4) and wall-clock at each validation
    assert wb.values("time/images_seen") == [16.0, 32.0]
    elapsed = wb.values("time/elapsed_s")
    assert len(elapsed) == 2 and 0 < elapsed[0] < elapsed[1]
    validation = wb.values("time/validation_s")  # the part of it spent validating
    assert len(validation) == 2 and 0 <= validation[0] < validation[1] < elapsed[1]
    # once at the start: the forward process picture and the alphabar / SNR curves
    assert len(wb.values("schedule/forward_process/_type")) == len(wb.values("schedule/curves/_type")) == 1
    # a dashboard (W&B's, `wandb leet`) shows one panel per history key: no epoch counter beside the step counter,
    # no table whose metadata (_type, ncols, nrows, sha256, ...) would read as metrics
    assert "epoch" not in wb.history_keys
    assert not any(
        k.startswith("schedule/") and not k.startswith(("schedule/forward_process/", "schedule/curves/"))
        for k in wb.history_keys
    )
    assert wb.values("schedule/forward_process/captions") == [["t = 0, 12, 25, 38, 50, 62, 75, 88, 100"]]
    assert len(wb.media) == 4  # 2 sample grids + forward process + curves
    for name in ("forward_process.png", "schedule.png"):
        with Image.open(run / "figures" / name) as img:
            assert img.size[0] > img.size[1]
    assert wb.config["config"]["model"]["base_channels"] == 8 and wb.config["model/params"] > 0
    assert wb.tags == ["dev"]


def test_cosine_schedule_with_csv_logger(run_train, tmp_path):
    _ok(run_train("schedule=cosine", "logger=csv", "callbacks.model_checkpoint.save_top_k=-1"))
    # kept step checkpoints are named like the grids, at every validation
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
    with open(next((tmp_path / "run").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(x > 0 for x in losses)
    cfg = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert cfg["config"]["schedule"]["name"] == "cosine"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["schedule.name=cosin"],
            "error: unknown schedule 'cosin': choose one of linear, quadratic, sigmoid, cosine",
        ),
        (["data.image_size=30", "model.channel_mult=[1,2,2]"], "image_size 30 cannot be halved 2 times"),
        (["data=image_folder", "data.root=/no/such/folder"], "data folder /no/such/folder does not exist"),
        (["data=image_folder"], "these config values must be set: data.root"),
        (["data=mnist"], "MNIST was not found under"),
        (["optim.lr=0"], "error: optim.lr must be a positive number, got 0.0"),
        (
            ["trainer.val_check_interval=0"],
            "error: trainer.val_check_interval must be a number of steps >= 1",
        ),
        (
            ["data.hflip=maybe"],
            "error: data.hflip must be true or false, got 'maybe': set it like data.hflip=true",
        ),
        (
            ["schedule.num_timesteps=1"],
            "error: schedule linear with schedule.num_timesteps=1 ends at alphabar_T = 0.9: x_T still shows the data",
        ),
        (["optim.lrr=0.1"], "error: optim.lrr is not a setting here: check its spelling"),
        (["trainer.max_steps=0"], "error: trainer.max_steps must be at least 1 (or -1: no limit), got 0"),
        (["seed=-1"], "error: seed must be at least 0, got -1"),
        pytest.param(
            ["data.num_workers=-1"], "error: data.num_workers must be at least 0", marks=pytest.mark.slow
        ),
        pytest.param(
            ["callbacks.sample_grid.n=0"],
            "error: invalid callbacks.sample_grid config: the sample grid needs n >= 1 images, got n=0",
            marks=pytest.mark.slow,
        ),
        (["model.num_heads=3"], "not divisible by num_heads=3"),
        (["data.batch_size=abc"], "error: data.batch_size must be an integer, got 'abc'"),
        (["optim.lr=fast"], "error: optim.lr must be a number, got 'fast'"),
        (
            ["diffusion.self_condition=maybe"],
            "error: diffusion.self_condition must be true or false, got 'maybe': set it like diffusion.self_condition=true",
        ),
        (
            ["model.scale_shift_norm=1.5"],
            "error: model.scale_shift_norm must be true or false, got 1.5",
        ),
        (
            ["recipe.t_sampling=lognormal", "recipe.log_sigma_std=0"],
            "error: invalid recipe config: log_sigma_std must be positive, got 0",
        ),
        (
            ["trainer.devices=0"],
            "error: invalid trainer config: `Trainer(devices=0)` value is not a valid input",
        ),
    ],
)
def test_bad_config_ends_before_training_with_one_sentence(run_train, tmp_path, overrides, message):
    proc = run_train(*overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    run = tmp_path / "run"
    assert (
        not (run / "checkpoints").exists() and not (run / "wandb").exists() and not (run / "samples").exists()
    )


def test_a_non_finite_loss_ends_in_one_sentence_before_its_weights_are_saved(run_train, tmp_path):
    proc = run_train("optim.lr=1e30", "optim.warmup_steps=0", "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: the training loss became inf at step 1: lower optim.lr" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "schedule=cosin",
            "error: unknown option schedule=cosin: choose one of cosine, linear, quadratic, sigmoid",
        ),
        (
            "model=unet_huge",
            "error: unknown option model=unet_huge: choose one of unet_ddpm_cifar10, unet_small",
        ),
        ("foo=1", "error: foo is not a setting here: check its spelling (add a new key with +foo=...)"),
    ],
)
def test_an_unknown_config_option_is_one_sentence_and_exit_2(run_train, override, message):
    proc = run_train(override)
    assert proc.returncode == 2 and message in proc.stderr.splitlines(), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_ddpm_cifar10_experiment_pins_the_paper_recipe(run_train):
    proc = run_train("experiment=ddpm_cifar10", "--cfg", "job", "--resolve", tiny=False)
    _ok(proc)
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["base_channels"] == 128 and cfg["model"]["channel_mult"] == [1, 2, 2, 2]
    assert cfg["model"]["attn_resolutions"] == [16] and cfg["model"]["dropout"] == 0.1
    assert cfg["schedule"] == {"name": "linear", "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    assert (
        cfg["data"]["global_batch_size"] == 128
        and cfg["data"]["hflip"] is True
        and cfg["data"]["source"] == "cifar10"
    )
    assert cfg["optim"]["lr"] == 2e-4 and cfg["optim"]["warmup_steps"] == 5000
    assert cfg["ema"]["decay"] == 0.9999 and cfg["trainer"]["max_steps"] == 800000
    assert cfg["trainer"]["gradient_clip_val"] == 1.0


def test_conditional_cifar10_experiment_is_the_paper_recipe_with_a_class_embedding(run_train):
    proc = run_train("experiment=ddpm_cifar10_cond", "--cfg", "job", "--resolve", tiny=False)
    _ok(proc)
    import yaml

    from ddpm.models import UNet

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["condition"] == {"name": "class", "p_uncond": 0.1, "guidance": 0.3}
    assert cfg["data"]["labels"] is True and cfg["model"]["num_classes"] == "auto"
    assert (
        cfg["model"]["base_channels"] == 128 and cfg["optim"]["lr"] == 2e-4 and cfg["ema"]["decay"] == 0.9999
    )
    model = {k: v for k, v in cfg["model"].items() if k != "_target_"} | {"num_classes": 10}
    extra = sum(p.numel() for p in UNet(**model).parameters()) - sum(
        p.numel() for p in UNet(**(model | {"num_classes": None})).parameters()
    )
    assert extra == 11 * 512  # ten classes and the null class, embedded like the time (4 x 128 channels)


def test_ddpm_cifar10_experiment_without_data_says_where_to_put_it(run_train):
    proc = run_train("experiment=ddpm_cifar10", tiny=False)
    assert proc.returncode == 2 and "CIFAR10 was not found under" in proc.stderr


def test_same_seed_reproduces_the_same_weights(run_train, tmp_path):
    overrides = ["trainer.max_steps=2", "logger=none", "~callbacks.sample_grid"]
    _ok(run_train(*overrides, run_dir="a"))
    _ok(run_train(*overrides, run_dir="b"))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_wall_clock_budget_stops_the_run_and_leaves_last_ckpt(run_train, tmp_path):
    proc = run_train("trainer.max_steps=-1", "trainer.max_time=00:00:00:04", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] > 0
    assert list((tmp_path / "run" / "samples").glob("step_*.png"))  # the end-of-training grid


def test_a_headless_run_prints_progress_lines_and_a_summary_without_noise(run_train, tmp_path):
    """stdout is a pipe here, as under SLURM or nohup: progress lines (every 0 s here), a closing summary that says
    where the files are, and none of the libraries' messages a user cannot act on."""
    proc = run_train("callbacks.headless_progress.every_s=0")
    _ok(proc)
    lines = [line for line in proc.stdout.splitlines() if "[ddpm.progress]" in line]
    assert len(lines) >= 3, proc.stdout[-3000:]
    assert re.search(
        r"step 4/4 \\| loss [\\d.]+ \\| [\\d.]+ img/s \\| elapsed \\d+:\\d\\d \\| ETA 0:00", lines[-1]
    ), lines
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "run finished: step 4 in " in proc.stdout and f"python sample.py ckpt_path={ckpt}" in proc.stdout
    spent = re.search(r"time: +validation (\d+) s of (\d+) s training", proc.stdout)
    assert spent and int(spent.group(1)) <= int(spent.group(2)), proc.stdout[-2000:]
    assert f"python evaluate.py ckpt_path={ckpt}" in proc.stdout and "wandb leet" in proc.stdout
    assert (tmp_path / "run" / "train.log").read_text().count("[ddpm.progress]") == len(
        lines
    )  # the log file too
    out = proc.stdout + proc.stderr
    assert "litlogger" not in out and "anonymous setting" not in out and "LeafSpec" not in out
    assert (
        "`weights_only` was not set" not in out
        and "Total FLOPs" not in out
        and "100% of the batches" not in out
    )
