"""Multirun sweeps with the real `python train.py -m`: grid sweeps, the Optuna search, the submitit launcher."""

from __future__ import annotations

import csv
import math

import cloudpickle
import optuna
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.helpers.cli import TINY, TINY_FID, run_script
from tests.helpers.paths import ROOT
from tests.helpers.wandb_files import find_offline_runs

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


def test_grid_sweep_of_runs_that_never_validate_runs_every_job(tmp_path):
    """A grid sweep needs no return value: jobs that end before their first validation (no val/loss) all run."""
    sweep = tmp_path / "grid"
    proc = run_script(
        "train.py", "-m", *TINY, "trainer.val_check_interval=250", "trainer.max_steps=3", "logger=none",
        f"hydra.sweep.dir={sweep}", "schedule=linear,cosine", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job in ("0", "1"):
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
        assert ckpt["global_step"] == 3
    assert "optimized_metric=val/loss was not logged by this run" in proc.stdout + proc.stderr  # a warning


def test_optuna_trials_that_cannot_log_the_metric_fail_before_they_train(tmp_path):
    sweep = tmp_path / "optuna"
    proc = run_script(
        "train.py", *TINY, "hparams_search=fid_optuna", "optimized_metric=val/loss", "trainer.val_check_interval=250",
        "trainer.max_steps=3", f"hydra.sweep.dir={sweep}", "logger=none", "hydra.sweeper.n_trials=2", cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-4000:]
    for job in (0, 1):  # each trial fails with the sentence, and the study ends with both in its table
        assert f"error: job {job} (" in proc.stderr
    assert "optimized_metric=val/loss is logged at validation, but trainer.max_steps=3 ends" in proc.stderr
    assert "error: 2 of 2 jobs failed (job 0, 1)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(sweep.rglob("*.ckpt"))


@pytest.mark.slow  # kept out of the default suite's 15 minutes; CI runs it (make test-slow)
def test_optuna_search_minimises_validation_fid(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    sweep = tmp_path / "optuna"
    proc = run_script(
        "train.py", *TINY, "hparams_search=fid_optuna", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}", "trainer.max_steps=2",
        *TINY_FID[1:], "logger=csv", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        "diffusion=eps",  # after 2 steps an x0 network draws one grey image whatever the trial: no choice to make
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the study lives in its database (resumable, shareable by parallel workers), with both trials' values
    study = optuna.load_study(study_name="ddpm_fid", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len([t for t in study.trials if t.value is not None]) == 2
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    # each trial returned its last validation FID (its CSV log); the search reports the smallest and its parameters
    finals, params = [], []
    for trial in ("0", "1"):
        with open(next((sweep / trial).rglob("metrics.csv"))) as f:
            fids = [
                float(r["val/fid_8_sde_dpm_solver_pp3"])
                for r in csv.DictReader(f)
                if r.get("val/fid_8_sde_dpm_solver_pp3")
            ]
        # after the validation at step 2 and when training ends, at the same step: the same weights, the same value
        assert len(fids) == 2 and math.isfinite(fids[0]) and fids[0] > 0 and fids[1] == fids[0]
        finals.append(fids[-1])
        overrides = yaml.safe_load((sweep / trial / ".hydra" / "overrides.yaml").read_text())
        params.append(dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in result["best_params"]))
    assert finals[0] != finals[1]  # the trials differ, so the choice below is a real one
    assert result["best_value"] == pytest.approx(min(finals), rel=1e-6)
    best = params[finals.index(min(finals))]
    assert set(best) == {"optim.lr", "ema.decay", "schedule"}
    for key, value in result["best_params"].items():
        assert str(value) == best[key] or float(value) == pytest.approx(float(best[key]))


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
