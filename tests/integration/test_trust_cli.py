"""What a researcher's overnight run must survive, with the real CLI: sweeps that outlive their failing jobs, resumes that
refuse a changed model, a re-used run folder that says what it does, Ctrl-C and failed checkpoint writes that lose
nothing saved, and bad image folders refused before training. Each case: the exit code, one sentence, no traceback,
and what was saved still there."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from PIL import Image

from ddpm.checkpoint import read_checkpoint
from tests.helpers.cli import TINY, interrupt_when, popen, run_script, train_tiny

QUIET = [*TINY, "logger=none", "~callbacks.sample_grid"]


def slow(*values):
    """A parametrized case kept out of the default suite (CI runs it with make test-slow)."""
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A TINY run trained once (4 steps); tests work on copies of its folder (`copy_run`)."""
    root = tmp_path_factory.mktemp("trained")
    train_tiny(root)
    return root / "run"


def copy_run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run at tmp_path/run; returns its last.ckpt."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def one_sentence(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The `error: ...` line of a run that failed as a user's mistake should: `code`, no traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, proc.stderr[-3000:]
    return errors[-1]


def rows_of(sweep: Path) -> list[dict]:
    return yaml.safe_load((sweep / "sweep_results.yaml").read_text())


# ---- 1. sweeps outlive their failing jobs --------------------------------------------------------------------------


def test_a_grid_sweep_runs_every_job_past_a_bad_value_a_bad_type_and_a_divergence(tmp_path):
    sweep = tmp_path / "grid"
    proc = run_script(
        "train.py", "-m", *QUIET, f"hydra.sweep.dir={sweep}", "optim.lr=0.001,-1,abc,1e30,0.002", cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    # every failure was a user's mistake (a range, a type, a learning rate that diverged): exit 2, and no traceback
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "error: job 1 (" in err and "optim.lr must be a positive number, got -1" in err
    assert "error: job 2 (" in err and "optim.lr must be a number, got 'abc'" in err
    assert "error: job 3 (" in err and "the training loss became" in err
    assert "error: 3 of 5 jobs failed (job 1, 2, 3)" in err
    # the jobs after the failures ran, and the ones that succeeded saved their runs
    for job in ("0", "4"):
        assert read_checkpoint(sweep / job / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (sweep / "3" / "checkpoints" / "last.ckpt").exists()  # the diverged weights were never saved
    rows = rows_of(sweep)
    assert [r["job"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["ok"] for r in rows] == [True, False, False, False, True]
    assert [r["overrides"] for r in rows] == [
        f"optim.lr={v}" for v in ("0.001", "-1", "abc", "1e+30", "0.002")
    ]
    assert (
        "the training loss became" in rows[3]["result"] and float(rows[0]["result"]) > 0
    )  # val/loss returned
    table = (sweep / "sweep_results.md").read_text()
    assert "| 2 | optim.lr=abc | **failed**: optim.lr must be a number" in table
    assert table.split("\n", 2)[2] in proc.stdout  # the same table printed at the end


@pytest.mark.slow  # 10 s; the grid sweep above runs by default
def test_an_optuna_study_records_a_diverging_trial_as_failed_and_goes_on(tmp_path):
    sweep, db = tmp_path / "optuna", f"sqlite:///{tmp_path / 'study.db'}"
    # TPE's random start-up with seed 3 proposes lr 1e30 first, then 0.001 twice (optuna 2.10, pinned)
    proc = run_script(
        "train.py", *QUIET, "hparams_search=fid_optuna", "callbacks=default",
        "optimized_metric=val/loss", "hydra.sweeper.n_trials=3", "seed=3", f"hydra.sweeper.storage={db}",
        "hydra.sweeper.params={optim.lr:'choice(0.001,1e30)'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert "error: job 0 (" in proc.stderr and "the training loss became" in proc.stderr
    study = optuna.load_study(study_name="ddpm_fid", storage=db)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, *[optuna.trial.TrialState.COMPLETE] * 2]
    assert [r["ok"] for r in rows_of(sweep)] == [False, True, True]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["optim.lr"] == 0.001 and best["best_value"] > 0


# ---- 2. and 3. resuming ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("diffusion=eps", "diffusion.objective 'x0' in the checkpoint, 'eps' now"),
        ("schedule.num_timesteps=50", "schedule.num_timesteps 100 in the checkpoint, 50 now"),
        slow("schedule=cosine", "schedule.name 'linear' in the checkpoint, 'cosine' now"),
        slow("model.num_res_blocks=2", "model.num_res_blocks 1 in the checkpoint, 2 now"),
        slow("diffusion.self_condition=true", "diffusion.self_condition False in the checkpoint, True now"),
    ],
)
def test_resume_refuses_a_changed_model_before_writing_anything(trained, tmp_path, change, named):
    last = copy_run(trained, tmp_path)
    before = last.read_bytes()
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".log"}
    for how in ("in its folder", "by ckpt_path") if change == "diffusion=eps" else ("in its folder",):
        where = tmp_path / ("run" if how == "in its folder" else "other")
        extra = [] if how == "in its folder" else [f"ckpt_path={last}"]
        proc = run_script(
            "train.py", *QUIET, "trainer.max_steps=8", change, *extra, f"hydra.run.dir={where}", cwd=tmp_path
        )
        line = one_sentence(proc)
        assert f"checkpoint {last} holds another model than this run's config" in line and named in line
        assert last.read_bytes() == before
        now = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix != ".log"}
        assert now == files  # the run's folder as it was, its .hydra/ record of the config included
        assert not (where / "checkpoints").exists() or where == tmp_path / "run"


def test_settings_that_may_change_on_resume_do(trained, tmp_path):
    last = copy_run(trained, tmp_path)
    proc = run_script(
        "train.py", *QUIET, "trainer.max_steps=6", "optim.lr=0.002", "trainer.val_check_interval=3", "logger=csv",
        "data.eval_batch_size=50", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming the run in this folder from {last} at step 4" in proc.stdout  # Hydra logs to stdout
    assert read_checkpoint(last)["global_step"] == 6


def test_a_reused_run_folder_with_nothing_left_to_train_says_so(trained, tmp_path):
    last = copy_run(trained, tmp_path)
    before = last.read_bytes()
    proc = run_script("train.py", *QUIET, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"nothing left to train: {last} is at step 4 and trainer.max_steps=4" in proc.stdout
    assert last.read_bytes() == before


# ---- 4. interrupts and failed writes ---------------------------------------------------------------------------------


def test_ctrl_c_during_training_saves_the_run_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    long = [a for a in QUIET if not a.startswith("trainer.max_steps")]
    proc = popen("train.py", *long, "trainer.max_steps=100000", f"hydra.run.dir={run}", cwd=tmp_path)
    out, err = interrupt_when(proc, last.exists)  # the first checkpoint is at step 2: training is under way
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in out + err
    lines = [line for line in out.splitlines() if line.strip()]  # the log (Hydra logs to stdout)
    assert (
        "stopped by SIGINT at step" in lines[-1]
        and f"resume with: python train.py ckpt_path={last}" in lines[-1]
    )
    stopped = int(lines[-1].split("at step ")[1].split(":")[0])
    saved = read_checkpoint(last)
    assert saved["global_step"] == stopped >= 2 and saved["optimizer_states"]
    resumed = run_script(
        "train.py", *long, f"trainer.max_steps={stopped + 1}", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(last)["global_step"] == stopped + 1


@pytest.mark.slow  # 20 s; its sibling for training runs by default
def test_ctrl_c_during_sampling_and_evaluation_ends_in_one_line(trained, tmp_path):
    ckpt = copy_run(trained, tmp_path)
    out = tmp_path / "samples"
    proc = popen(
        "sample.py", f"ckpt_path={ckpt}", "n=100000", "batch_size=4", "sampler=ddpm", f"hydra.run.dir={out}",
        cwd=tmp_path,
    )  # fmt: skip
    log = out / "sample.log"
    _, err = interrupt_when(proc, lambda: log.exists() and "sampled 4 / 100000" in log.read_text())
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted: sampling stopped, no images were written"
    assert not (out / "samples.npz").exists()

    out = tmp_path / "evaluation"
    proc = popen(
        "evaluate.py", f"ckpt_path={ckpt}", "metrics=[nll]", "nll.n=1000", "nll.batch_size=2", "wandb.enabled=false",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    log = out / "evaluate.log"
    _, err = interrupt_when(proc, lambda: log.exists() and "NLL: batch 2 /" in log.read_text())
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted: evaluation stopped, no metrics were written"
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize(
    ("fault", "reason"), [("DiskFull", "No space left on device"), ("ReadOnly", "Read-only")]
)
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_names_the_folder(tmp_path, fault, reason):
    run = tmp_path / "run"
    proc = run_script(
        "train.py", *QUIET, "trainer.max_steps=8", f"hydra.run.dir={run}",
        f"trainer.plugins=[{{_target_:tests.helpers.faults.{fault}CheckpointIO,fail_at_write:2}}]", cwd=tmp_path,
        test_helpers=True,
    )  # fmt: skip
    line = one_sentence(proc)
    assert f"could not write checkpoint last.ckpt in {run / 'checkpoints'}" in line and reason in line
    ckpt = run / "checkpoints"
    assert read_checkpoint(ckpt / "last.ckpt")["global_step"] == 2  # the first write, intact
    assert not list(ckpt.glob("*.tmp"))


def test_an_unwritable_output_folder_is_refused_before_sampling(trained, tmp_path):
    ckpt = copy_run(trained, tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_script(
        "sample.py", f"ckpt_path={ckpt}", f"output_dir={blocker / 'samples'}", "n=2", f"hydra.run.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )  # fmt: skip
    line = one_sentence(proc)
    assert f"cannot write to {blocker / 'samples'}" in line and "set output_dir" in line
    assert "sampled" not in proc.stderr


# ---- 6. image folders ------------------------------------------------------------------------------------------------


def image_folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy()).save(root / f"{i:03d}.png")
    return root


FOLDER = [
    *QUIET,
    "data=image_folder",
    "data.image_size=16",
    "data.num_workers=0",
    "model.attn_resolutions=[8]",
]


@pytest.mark.parametrize("bad", ["truncated", slow("text")])
def test_an_image_folder_with_a_bad_file_is_refused_before_training(tmp_path, bad, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "images", 24)
    if bad == "truncated":
        data = (root / "007.png").read_bytes()
        (root / "007.png").write_bytes(data[: len(data) // 2])
    else:
        (root / "007.png").write_text("this is not an image\n")
    proc = run_script(
        "train.py", *FOLDER, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    line = one_sentence(proc)
    assert f"1 of 24 files under {root} are not readable images, e.g. 007.png" in line
    assert not (tmp_path / "run" / "checkpoints").exists()

    (root / "007.png").unlink()  # fixed: the run trains, and the folder's verdict is cached
    proc = run_script(
        "train.py", *FOLDER, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "cache" / "ddpm" / "image_check").glob("*.ok"))) == 1


def test_an_image_folder_smaller_than_one_batch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "images", 6)
    proc = run_script(
        "train.py", *FOLDER, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    line = one_sentence(proc)
    assert "the training split has 5 images, fewer than one batch of data.batch_size=8" in line


# ---- 5. every input of sample.py and evaluate.py, checked before any work --------------------------------------------

NO_CKPT = "ckpt_path=/no/such/run/last.ckpt"  # every check below comes before the checkpoint is read


@pytest.mark.parametrize(
    ("script", "override", "message"),
    [
        ("sample.py", "n=abc", "n must be an integer, got 'abc': set it like n=8"),
        slow("sample.py", "n=2.5", "n must be an integer, got 2.5"),
        ("sample.py", "n=0", "n must be at least 1, got 0"),
        slow("sample.py", "seed=abc", "seed must be an integer, got 'abc'"),
        slow("sample.py", "per_class=abc", "per_class must be an integer, got 'abc'"),
        slow("sample.py", "guidance=abc", "guidance must be a number, got 'abc'"),
        ("sample.py", "guidance=nan", "guidance must be a finite number >= 0 (0: no guidance), got nan"),
        slow("sample.py", "guidance=inf", "guidance must be a finite number >= 0 (0: no guidance), got inf"),
        slow("sample.py", "guidance=-1", "guidance must be a finite number >= 0 (0: no guidance), got -1.0"),
        ("sample.py", "use_ema=maybe", "use_ema must be true or false, got 'maybe'"),
        ("sample.py", "sampler=heun", "unknown option sampler=heun: choose one of ddim, ddpm, dpm_solver_pp"),
        slow("sample.py", "sampler.steps=abc", "sampler.steps must be an integer, got 'abc'"),
        ("evaluate.py", "nll.n=0", "nll.n must be at least 1, got 0"),
        slow("evaluate.py", "nll.n=abc", "nll.n must be an integer, got 'abc'"),
        slow("evaluate.py", "fid.n=0", "fid.n must be at least 2 (FID needs a covariance), got 0"),
        ("evaluate.py", "fid.n=1", "fid.n must be at least 2 (FID needs a covariance), got 1"),
        slow("evaluate.py", "fid.n=abc", "fid.n must be an integer, got 'abc'"),
        ("evaluate.py", "metrics=nll", "metrics must be a list, got 'nll': set it like metrics=[nll]"),
        slow("evaluate.py", "metrics=[]", "metrics is empty: choose from fid, nll"),
        slow("evaluate.py", "metrics=[nll,bpd]", "unknown metrics ['bpd']: choose from fid, nll"),
        slow("evaluate.py", "use_ema=maybe", "use_ema must be true or false, got 'maybe'"),
        ("evaluate.py", "guidance=nan", "guidance must be a finite number >= 0 (0: no guidance), got nan"),
        slow("evaluate.py", "sweep.guidance=[1,inf]", "sweep.guidance must be a finite number >= 0"),
    ],
)
def test_a_bad_input_of_sample_or_evaluate_is_one_sentence_before_any_work(
    tmp_path, script, override, message
):
    out = tmp_path / "out"
    proc = run_script(script, NO_CKPT, override, f"hydra.run.dir={out}", cwd=tmp_path)
    assert one_sentence(proc).startswith(f"error: {message}"), proc.stderr
    assert not (out / "samples.npz").exists() and not (out / "metrics.json").exists()
