"""Multirun sweeps with the real `python train.py -m`: grid sweeps, the Optuna search, the submitit launcher."""

from __future__ import annotations

import math

import cloudpickle
import yaml
from omegaconf import OmegaConf

from tests.conftest import ROOT
from tests.integration.conftest import TINY, TINY_FID, run_script
from tests.wandb_files import find_offline_runs

NARROW = [a for a in TINY if not a.startswith("model.base_channels")]


def test_grid_sweep_runs_every_combination_in_one_wandb_group(tmp_path):
    sweep = tmp_path / "multi"
    proc = run_script(
        "train.py", "-m", *NARROW, f"hydra.sweep.dir={sweep}", "schedule=linear,cosine",
        "model.base_channels=8,16", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    combos = set()
    runs = []
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        combos.add((cfg["schedule"]["name"], cfg["model"]["base_channels"]))
        (run,) = find_offline_runs(job / "wandb")
        runs.append(run)
    assert combos == {("linear", 8), ("linear", 16), ("cosine", 8), ("cosine", 16)}
    assert len({r.group for r in runs}) == 1 and runs[0].group == f"train-{sweep.name}"
    assert len({r.name for r in runs}) == 4 and all("schedule=" in r.name for r in runs)


def test_optuna_search_minimises_validation_fid(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    sweep = tmp_path / "optuna"
    proc = run_script(
        "train.py", *TINY, "hparams_search=fid_optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}", "trainer.max_steps=2",
        *TINY_FID[1:], "logger=csv",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert math.isfinite(result["best_value"]) and result["best_value"] > 0  # the trials' val/fid_8_ddim2
    assert {"optim.lr", "ema.decay", "schedule"} <= set(result["best_params"])
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]


def test_submitit_launcher_pickles_and_runs_the_job(tmp_path):
    # the SLURM launcher and the local one share submitit's path: the job is pickled, shipped and run elsewhere
    sweep = tmp_path / "sub"
    proc = run_script(
        "train.py", "-m", "hydra/launcher=submitit_local", *TINY, f"hydra.sweep.dir={sweep}", "logger=csv",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert list((sweep / ".submitit").rglob("*_result.pkl"))


def test_slurm_launcher_config_composes_from_the_trainer_settings():
    from hydra import compose, initialize_config_dir

    from ddpm.cli.train import main

    overrides = ["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert OmegaConf.to_container(launcher.additional_parameters) == {"signal": "USR1@120", "requeue": True}
    assert cloudpickle.loads(cloudpickle.dumps(main)) is main  # submitit ships the job function by reference
