"""`python distill.py ckpt_path=<teacher>`, the real CLI on a tiny teacher: a run folder like train.py's, students that
sample.py and evaluate.py load as ordinary checkpoints with their own sampler, resume after Ctrl-C, DDP, and bad input
refused in one sentence before anything is written."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import pytest
import torch

from ddpm.checkpoint import load_checkpoint, read_checkpoint
from ddpm.diffusion.samplers import trailing_timesteps
from ddpm.training.distillation import student_sampler
from tests.helpers.cli import interrupt_when, popen, run_script, train_tiny
from tests.helpers.wandb_files import find_offline_runs

# a teacher of 8 DDIM steps distilled into students of 4 and 2 steps, 4 optimizer steps in the first round, 2 of
# distribution matching of the 4-step student, 3 in the last round
TINY_DISTILL = [
    "method.teacher_steps=8",
    "method.student_steps=2",
    "method.first_round_steps=4",
    "method.steps_per_round=3",
    "method.matching_steps=2",
    "method.batch_size=8",
    "method.warmup_steps=1",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.distillation_rounds.n=4",
    "callbacks.fid.n=8",
    "callbacks.fid.reference_n=16",
    "~callbacks.progress_bar",
]


def slow(*values):
    """A parametrized case kept out of the default suite (CI runs it with make test-slow)."""
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny x_0-predicting teacher (the default objective), trained once for 4 steps."""
    return train_tiny(tmp_path_factory.mktemp("teacher"))


def distill(root: Path, teacher: Path, *overrides: str, run: str = "run"):
    return run_script(
        "distill.py",
        f"ckpt_path={teacher}",
        *TINY_DISTILL,
        *overrides,
        f"hydra.run.dir={root / run}",
        cwd=root,
    )


def ema_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k[len("ema.module.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}


def test_a_tiny_teacher_distils_through_the_cli_into_students_sample_py_loads(teacher, tmp_path):
    proc = distill(tmp_path, teacher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    run = tmp_path / "run"
    assert "students of 4, 4 (matched), 2 steps, 4, 2, 3 optimizer steps" in log
    assert "round 1 of 3: a 4-step student of the 8-step teacher" in log
    assert "round 2 of 3: the 4-step student matched to the distribution of the first teacher" in log
    assert "round 3 of 3: a 2-step student of the 4-step teacher" in log
    assert "round 1 done at step 4: the 4-step student" in log
    assert "round 2 done at step 6: the 4-step student" in log
    assert "run finished: step 9" in log and f"sample:     python sample.py ckpt_path={run}" in log
    for steps in (4, 2):
        assert f"student:    {run / 'checkpoints' / f'student_{steps}steps.ckpt'}" in log
        assert (run / "samples" / f"student_{steps}steps.png").is_file()
    (wb,) = find_offline_runs(run / "wandb")
    assert {"train/loss", "val/loss", "distill/student_steps", "distill/matching_loss"} <= wb.history_keys
    assert len(wb.values("distill/samples/_type")) == 3  # a grid per round

    # the students are ordinary checkpoints whose run config says what they were distilled for
    teacher_ema = ema_weights(read_checkpoint(teacher))
    for steps in (4, 2):
        module, cfg = load_checkpoint(run / "checkpoints" / f"student_{steps}steps.ckpt")
        assert cfg.distill.steps == steps and dict(cfg.sampler) == student_sampler(steps)
        assert (
            cfg.distill.teacher == str(teacher.resolve()) and cfg.model == load_checkpoint(teacher)[1].model
        )
        changed = [k for k, v in module.ema.module.state_dict().items() if not torch.equal(v, teacher_ema[k])]
        assert changed  # distillation trained the student
    last, student_2 = (
        read_checkpoint(run / "checkpoints" / "last.ckpt"),
        read_checkpoint(run / "checkpoints" / "student_2steps.ckpt"),
    )
    assert last["hyper_parameters"]["config"]["distill"]["steps"] == 2
    for k, v in ema_weights(last).items():
        assert torch.equal(v, ema_weights(student_2)[k])

    # sample.py: the student's own sampler by default (its 4 trailing timesteps); another one when asked, with a warning
    ckpt = run / "checkpoints" / "student_4steps.ckpt"
    proc = run_script(
        "sample.py", f"ckpt_path={ckpt}", "n=4", f"hydra.run.dir={tmp_path / 's4'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "this student was distilled for 4 steps: sampling with ddim on its timesteps" in out
    assert "ddim4, 4 network calls per image" in out
    assert trailing_timesteps(100, 4) == [24, 49, 74, 99]
    proc = run_script(
        "sample.py", f"ckpt_path={ckpt}", "n=4", "sampler=ddim", "sampler.steps=3", f"hydra.run.dir={tmp_path / 's3'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sampling with name=ddim, steps=3, spacing=uniform, eta=0.0 as asked" in proc.stdout + proc.stderr
    assert "ddim3, 3 network calls per image" in proc.stdout + proc.stderr

    # a student distils further by halving; matching needs the diffusion model itself
    proc = distill(tmp_path, ckpt, "method.teacher_steps=4", run="again")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "is a student, and distribution matching (method.matching_steps > 0) matches" in proc.stderr
    assert not (tmp_path / "again" / "checkpoints").exists()


@pytest.mark.slow  # 30 s: a distillation and FID; sample.py's default sampler is tested by default
def test_evaluate_py_scores_a_student_with_its_own_sampler(teacher, tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    assert distill(tmp_path, teacher, "~callbacks.fid", "logger=none").returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "student_2steps.ckpt"
    proc = run_script(
        "evaluate.py", f"ckpt_path={ckpt}", "metrics=[fid]", "fid.n=8", "fid.reference_n=16", "wandb.enabled=false",
        f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    fid = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fid"]
    assert fid["sampler"] == "ddim2" and fid["network_calls_per_image"] == 2


def test_ctrl_c_saves_the_distillation_and_the_same_command_resumes_it(teacher, tmp_path):
    run = tmp_path / "run"
    args = [
        f"ckpt_path={teacher}",
        *TINY_DISTILL,
        "method.first_round_steps=40",
        "method.matching_steps=40",
        "method.steps_per_round=40",
        "logger=none",
        "~callbacks.fid",
    ]
    proc = popen("distill.py", *args, f"hydra.run.dir={run}", cwd=tmp_path)
    first = run / "checkpoints" / "student_4steps.ckpt"
    out, err = interrupt_when(proc, first.exists)  # the first round is over: the run is in round 2, matching
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in out + err
    lines = [line for line in out.splitlines() if line.strip()]
    assert "stopped by SIGINT at step" in lines[-1]
    assert (
        f"resume with: python distill.py {' '.join(map(shlex.quote, args))} hydra.run.dir={run}" in lines[-1]
    )
    saved = read_checkpoint(run / "checkpoints" / "last.ckpt")
    stopped = saved["global_step"]
    assert 40 <= stopped < 80 and saved["distillation"]["round"] == 1
    # the fake score of the matching round is saved with it: the first teacher, trained on once matching has begun
    fake, first_teacher = saved["distillation"]["fake"], ema_weights(read_checkpoint(teacher))
    assert fake.keys() == first_teacher.keys()
    assert any(not torch.equal(v, first_teacher[k]) for k, v in fake.items()) == (stopped > 40)

    resumed = run_script("distill.py", *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert (
        f"resuming the run in this folder from {run / 'checkpoints' / 'last.ckpt'} at step {stopped}" in log
    )
    assert "round 1 of 3" not in log and "round 2 of 3" in log and "round 3 of 3" in log
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 120
    assert (run / "checkpoints" / "student_2steps.ckpt").is_file()


@pytest.mark.slow  # 30 s: three runs; what resume checks is what train.py's resume checks (tested by default)
def test_resume_refuses_another_distillation_and_a_training_checkpoint(teacher, tmp_path):
    assert distill(tmp_path, teacher, "logger=none", "~callbacks.fid").returncode == 0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    for resume, sentence in (
        (last, "is another distillation: steps_per_round 3 in the checkpoint, 4 now"),
        (teacher, "is not a checkpoint of distill.py"),
    ):
        proc = distill(
            tmp_path, teacher, "logger=none", "method.steps_per_round=4", f"resume={resume}", run="other"
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert sentence in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
        assert not (tmp_path / "other" / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, sentence",
    [
        (["method.student_steps=3"], "3 student steps are not reachable from 8 teacher steps by halving"),
        slow(["method.teacher_steps=256"], "method.teacher_steps=256 exceeds the teacher's T=100 timesteps"),
        (["method.objective=v"], "method.objective=v but the teacher predicts x0"),
        slow(["method.steps_per_round=abc"], "method.steps_per_round must be an integer"),
        slow(["method.guidance=2"], "is unconditional"),
        (
            ["method.matching_at=3"],
            "matching_at=3 is not the step count of a student of these rounds ([4, 2])",
        ),
        slow(["method.fake_lr=0"], "method.fake_lr must be a positive number"),
    ],
)
def test_bad_distillation_settings_are_one_sentence_before_anything_is_written(
    teacher, tmp_path, overrides, sentence
):
    proc = distill(tmp_path, teacher, *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and sentence in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_teacher_that_cannot_be_distilled_is_one_sentence(tmp_path):
    not_ours = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {}}, not_ours)
    (tmp_path / "eps").mkdir()
    eps_teacher = train_tiny(tmp_path / "eps", "diffusion=eps")
    for teacher, sentence in (
        (tmp_path / "missing.ckpt", "does not exist"),
        (not_ours, "holds no run config: it was not written by this project's train.py"),
        (eps_teacher, "predicts eps, which cannot be distilled to a few steps"),
    ):
        proc = distill(tmp_path, teacher)
        assert proc.returncode == 2, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and sentence in last and "Traceback" not in proc.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # ~40 s: two processes
def test_two_process_ddp_distillation(teacher, tmp_path):
    proc = distill(
        tmp_path, teacher, "logger=none", "~callbacks.fid", "trainer.accelerator=cpu", "trainer.devices=2"
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    run = tmp_path / "run"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 9
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["student_2steps.png", "student_4steps.png"]


@pytest.mark.slow  # ~30 s
def test_a_class_conditional_teacher_distils_into_a_class_conditional_student_with_its_guidance_folded(
    tmp_path,
):
    (tmp_path / "cond").mkdir()
    teacher = train_tiny(tmp_path / "cond", "condition=class", "condition.guidance=1.5")
    proc = distill(tmp_path, teacher, "logger=none", "~callbacks.fid")
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, cfg = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert module.num_classes == 10 and cfg.distill.guidance == 1.5 and cfg.condition.guidance == 0.0
    proc = run_script(
        "sample.py", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", "labels=[3,3,7]",
        f"hydra.run.dir={tmp_path / 's'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 network calls per image" in proc.stdout + proc.stderr  # guidance 0: no unconditional twin
