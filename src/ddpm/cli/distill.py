"""`python distill.py ckpt_path=<teacher>`: distil a trained checkpoint into a student that samples in a few network
calls (progressive distillation), in a run folder like train.py's.

The student's run config is the teacher's (network, schedule, objective, data, classes) with distill.py's trainer,
callbacks, logger and paths, the method's optimizer, a `distill` node (the method and its step counts) and a `sampler`
node: DDIM on the timesteps the student was distilled on. Each checkpoint rewrites both to the round it holds, so
sample.py and evaluate.py sample any of them with its own step count by default.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ddpm.build import build_module
from ddpm.checkpoint import find_last_checkpoint, load_checkpoint, read_checkpoint
from ddpm.cli.errors import run_job
from ddpm.cli.train import check_config, fit, nothing_left_to_train, resume_point, use_tf32
from ddpm.diffusion.distillation import halving_rounds
from ddpm.errors import ConfigError, building
from ddpm.host_memory import retain_freed_memory
from ddpm.schema import check_distill
from ddpm.training.distillation import ProgressiveDistillation, round_plan, student_sampler
from ddpm.training.quiet import quiet_lightning

log = logging.getLogger(__name__)

# what the student takes from distill.py's own config rather than from the teacher's run
OWN_NODES = ("task_name", "tags", "seed", "compile", "trainer", "callbacks", "logger", "paths")
# the distill settings a resumed run must share with the checkpoint it resumes
RESUME_MUST_MATCH = (
    "method",
    "teacher_steps",
    "student_steps",
    "steps_per_round",
    "first_round_steps",
    "matching_steps",
    "matching_at",
    "guidance",
)


def distill(cfg: DictConfig) -> float | None:
    quiet_lightning()
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    check_distill(cfg)  # ranges; the types were checked when Hydra composed the config (ddpm.schema)
    retain_freed_memory()
    teacher, teacher_cfg = load_checkpoint(cfg.ckpt_path)
    run_cfg = student_config(cfg, teacher_cfg)
    check_config(run_cfg)
    datamodule = building("data", lambda: hydra.utils.instantiate(run_cfg.data))
    datamodule.check()
    use_tf32()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    d = run_cfg.distill
    module = build_module(
        run_cfg,
        ProgressiveDistillation,
        teacher_steps=d.teacher_steps,
        student_steps=d.student_steps,
        steps_per_round=d.steps_per_round,
        first_round_steps=d.first_round_steps,
        matching_steps=d.matching_steps,
        matching_at=d.matching_at,
        matching_lr=d.matching_lr,
        fake_lr=d.fake_lr,
        teacher_guidance=d.guidance,
    )
    module.start_from(teacher.ema.module.state_dict())
    ckpt_path = resume_path(cfg)
    resumed_step = None
    if ckpt_path is not None:
        check_same_distillation(ckpt_path, run_cfg)
        resumed_step = resume_point(module, ckpt_path, run_cfg)
        if nothing_left_to_train(run_cfg, ckpt_path, resumed_step):
            return None
    lengths = [end - start for start, end in map(module.round_span, range(len(module.rounds)))]
    log.info(
        "distilling %s: %d-step DDIM teacher -> students of %s steps, %s optimizer steps",
        cfg.ckpt_path,
        d.teacher_steps,
        ", ".join(
            f"{n} (matched)" if r == module.matching_round else str(n) for r, n in enumerate(module.rounds)
        ),
        ", ".join(map(str, lengths)),
    )
    trainer = fit(run_cfg, module, datamodule, ckpt_path, resumed_step)
    value = trainer.callback_metrics.get("val/loss")
    return None if value is None else float(value)


def student_config(cfg: DictConfig, teacher_cfg: DictConfig) -> DictConfig:
    """The student's run config (module docstring); ConfigError for a teacher that cannot be distilled this way."""
    method = cfg.method
    objective = teacher_cfg.diffusion.get("objective", "eps")
    if objective == "eps":
        raise ConfigError(
            f"teacher {cfg.ckpt_path} predicts eps, which cannot be distilled to a few steps (its x_0 = (x_t - sigma "
            "eps) / alpha divides by alpha_T ~ 0.006 at the first step): distil a teacher trained with diffusion=x0 "
            "or diffusion=v"
        )
    if method.objective is not None and method.objective != objective:
        raise ConfigError(
            f"method.objective={method.objective} but the teacher predicts {objective}: the student starts from the "
            f"teacher's weights and must predict what they predict: leave method.objective unset (or {objective})"
        )
    if teacher_cfg.diffusion.get("self_condition"):
        raise ConfigError(
            f"teacher {cfg.ckpt_path} is self-conditioned, which distillation does not support: distil a teacher "
            "trained without diffusion.self_condition"
        )
    earlier = teacher_cfg.get("distill")
    if earlier is not None and earlier.get("steps") != method.teacher_steps:
        raise ConfigError(
            f"teacher {cfg.ckpt_path} is a student distilled for {earlier.get('steps')} steps: set "
            f"method.teacher_steps={earlier.get('steps')}"
        )
    num_timesteps = teacher_cfg.schedule.num_timesteps
    if method.teacher_steps > num_timesteps:
        raise ConfigError(
            f"method.teacher_steps={method.teacher_steps} exceeds the teacher's T={num_timesteps} timesteps"
        )
    try:
        halving_rounds(method.teacher_steps, method.student_steps)
    except ValueError as e:
        raise ConfigError(f"method.student_steps: {e}") from None
    if method.matching_steps > 0 and earlier is not None:
        raise ConfigError(
            f"teacher {cfg.ckpt_path} is a student, and distribution matching (method.matching_steps > 0) matches "
            "the distribution of the diffusion model itself: distil the train.py checkpoint it came from, or set "
            "method.matching_steps=0"
        )
    try:
        lengths = round_plan(
            method.teacher_steps,
            method.student_steps,
            method.steps_per_round,
            method.first_round_steps,
            method.matching_steps,
            method.matching_at,
        )[1]
    except ValueError as e:
        raise ConfigError(f"method.matching_at: {e}, or set method.matching_steps=0") from None
    conditional = teacher_cfg.model.get("num_classes") is not None
    if method.guidance is not None and not conditional:
        raise ConfigError(
            f"method.guidance={method.guidance} but teacher {cfg.ckpt_path} is unconditional: leave it unset"
        )
    guidance = (
        float(method.guidance if method.guidance is not None else teacher_cfg.condition.get("guidance", 0.0))
        if conditional
        else 0.0
    )

    own = OmegaConf.to_container(cfg, resolve=True)
    student = OmegaConf.to_container(teacher_cfg, resolve=True)
    student.update({k: own[k] for k in OWN_NODES})
    student["ckpt_path"] = None
    student["optimized_metric"] = "val/loss"
    student["optim"] = {
        "lr": method.lr,
        "weight_decay": 0.0,
        "adam_betas": [0.9, 0.999],
        "eps": 1e-8,
        "warmup_steps": method.warmup_steps,
        "decay": method.decay,
        "final_lr_ratio": 0.0,
    }
    student["ema"] = {"decay": method.ema_decay, "warmup": True}
    if method.batch_size is not None:
        student["data"]["batch_size"] = method.batch_size
        student["data"]["global_batch_size"] = None
    if cfg.get("data_root"):
        student["data"]["root"] = cfg.data_root
    if conditional:  # the teacher's guidance is folded into the student: it samples at guidance 0
        student["condition"]["guidance"] = 0.0
    stop = (student.get("callbacks") or {}).get("last_checkpoint")
    if stop:  # a stopped run names the command that resumes it: this one, in this run's folder
        stop["resume_command"] = resume_command(student["paths"]["output_dir"])
    student["trainer"]["max_steps"] = sum(lengths)
    student["sampler"] = student_sampler(method.student_steps)
    student["distill"] = {
        "method": method.name,
        "teacher": str(Path(cfg.ckpt_path).resolve()),
        "teacher_steps": method.teacher_steps,
        "student_steps": method.student_steps,
        "steps_per_round": method.steps_per_round,
        "first_round_steps": method.first_round_steps,
        "matching_steps": method.matching_steps,
        "matching_at": method.matching_at,
        "matching_lr": method.matching_lr,
        "fake_lr": method.fake_lr,
        "guidance": guidance,
        "steps": method.student_steps,  # each checkpoint: the steps of the student it holds
    }
    return OmegaConf.create(student)


def resume_command(output_dir: str) -> str:
    """`python distill.py <this command line's overrides> hydra.run.dir=<this run>`: run again, it resumes."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "resume="))]
    return " ".join(
        ["python distill.py", *map(shlex.quote, kept), shlex.quote(f"hydra.run.dir={output_dir}")]
    )


def resume_path(cfg: DictConfig) -> str | None:
    """`resume`: a path, or `last` (the newest distill run's checkpoints/last.ckpt); with none, the run folder's own
    last.ckpt (a requeued job restarts in its folder)."""
    path = cfg.get("resume")
    if path == "last":
        return str(find_last_checkpoint(Path(cfg.paths.log_dir) / cfg.task_name / "runs"))
    if path is not None:
        return path
    own = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return str(own) if own.is_file() else None


def check_same_distillation(path: str, run_cfg: DictConfig) -> None:
    """The checkpoint to resume must be a distillation of the same method and step counts."""
    ckpt = read_checkpoint(path, mmap=True)
    stored = (ckpt["hyper_parameters"]["config"] or {}).get("distill")
    if stored is None or "distillation" not in ckpt:
        raise ConfigError(
            f"resume={path} is not a checkpoint of distill.py: give a distillation run's checkpoints/last.ckpt, or "
            "leave resume unset to start a new distillation"
        )
    changes = [
        f"{k} {stored.get(k)!r} in the checkpoint, {run_cfg.distill.get(k)!r} now"
        for k in RESUME_MUST_MATCH
        if stored.get(k) != run_cfg.distill.get(k)
    ]
    if changes:
        raise ConfigError(
            f"checkpoint {path} is another distillation: {'; '.join(changes)}: resume with the method settings of "
            "the run that wrote it, or start a new run in another folder"
        )


def main(cfg: DictConfig) -> Any:
    """Entry point called by the root distill.py (decorated there with @hydra.main)."""
    return run_job(
        lambda: distill(cfg), interrupted="interrupted before distillation started: nothing was saved"
    )
