"""The types of every setting of train.py, distill.py, sample.py and evaluate.py, as Hydra structured configs, and the
range checks that types cannot say (n >= 1, finite guidance, ...), in one place.

The dataclasses are registered in Hydra's ConfigStore (`train_schema`, `distill_schema`, `sample_schema`,
`evaluate_schema`, ...) and head the defaults lists of conf/train.yaml, distill.yaml, sample.yaml and evaluate.yaml,
so OmegaConf checks each value's type when the command line is composed (`n=abc`, `use_ema=maybe`, `metrics=nll` are
refused there). A node whose keys depend on the chosen option (a schedule, a sampler) is typed by its option's
dataclass at check time (`check_named_node`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm import diffusion
from ddpm.data import ImageDataModule
from ddpm.errors import ConfigError

# ---- train.py ----------------------------------------------------------------------------------------------------


@dataclass
class Optim:
    lr: float = MISSING
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    decay: str = "constant"
    final_lr_ratio: float = 0.0


@dataclass
class EMA:
    decay: float = MISSING
    warmup: bool = True


def settings_of(cls: type, built_from: str | None = None, target: bool = False) -> type:
    """A dataclass with one field per setting of `cls.__init__` (all but self and `built_from`, the object it is built
    on), typed by its annotation, and `_target_` first if the node is instantiated by Hydra: the config's types follow
    the signature of the class the node builds. No defaults: the group's files give every value (a default here
    would also fill a `???` that an option leaves for the user, since a merge does not overwrite with `???`)."""
    params = inspect.signature(cls.__init__, eval_str=True).parameters.values()
    names = (["_target_"] if target else []) + [p.name for p in params if p.name not in ("self", built_from)]
    types = {"_target_": str} | {p.name: p.annotation for p in params}
    return make_dataclass(cls.__name__ + "Settings", [(n, types[n], field(default=MISSING)) for n in names])


Diffusion = settings_of(diffusion.GaussianDiffusion, "betas")  # the process, built on the schedule's betas
Recipe = settings_of(diffusion.Recipe, "diffusion")  # how training uses the process
Data = settings_of(ImageDataModule, target=True)


@dataclass
class Model:
    _target_: str = MISSING
    image_size: int = MISSING
    in_channels: int = MISSING
    base_channels: int = MISSING
    channel_mult: list[int] = MISSING
    num_res_blocks: int = MISSING
    attn_resolutions: list[int] = MISSING
    dropout: float = 0.0
    num_heads: int = 1
    num_groups: int = 32
    channels_last: bool = False
    scale_shift_norm: bool = False
    tf_padding: bool = False
    num_classes: Any = None  # null, a number, or auto (condition=class)


@dataclass
class Trainer:
    """Lightning Trainer arguments. Those whose type is Lightning's union (an int means steps, a float a fraction of
    an epoch; devices can be a count, a list or "auto") are Any here and range-checked in `check_train`."""

    _target_: str = MISSING
    default_root_dir: str | None = MISSING  # None only where the run has no folder yet (`--cfg job`)
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: Any = "32-true"
    max_steps: int = -1
    max_time: Any = None
    max_epochs: int | None = None
    gradient_clip_val: float | None = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = None
    num_sanity_val_steps: int = 0
    limit_val_batches: Any = None
    enable_model_summary: bool = False
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    deterministic: Any = False
    use_distributed_sampler: bool = False
    plugins: Any = None


@dataclass
class Condition:
    name: str = "none"
    p_uncond: float = 0.1
    guidance: float = 0.0


@dataclass
class TrainConfig:
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    seed: int | None = None
    ckpt_path: str | None = None
    optimized_metric: str = "val/loss"
    compile: bool = False
    optim: Optim = field(default_factory=Optim)
    ema: EMA = field(default_factory=EMA)
    diffusion: Diffusion = field(default_factory=Diffusion)
    recipe: Recipe = field(default_factory=Recipe)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    trainer: Trainer = field(default_factory=Trainer)
    condition: Condition = field(default_factory=Condition)
    schedule: Any = MISSING  # typed by its option: SCHEDULES
    sampler: Any = MISSING  # typed by its option: SAMPLERS
    callbacks: Any = None
    logger: Any = None
    paths: Any = None


# ---- distill.py ---------------------------------------------------------------------------------------------------


@dataclass
class ProgressiveMethod:
    name: str = "progressive"
    teacher_steps: int = MISSING
    student_steps: int = MISSING
    steps_per_round: int = MISSING
    first_round_steps: int | None = None  # null: steps_per_round
    matching_steps: int = 0  # the distribution-matching round (0: none)
    matching_at: int = 4  # the student it matches
    matching_lr: float = 2e-5
    fake_lr: float = 1e-4
    objective: str | None = None  # null: the teacher's (the only one allowed)
    guidance: float | None = None  # null: a class-conditional teacher's condition.guidance
    lr: float = MISSING
    warmup_steps: int = 0
    decay: str = "linear"
    ema_decay: float = 0.99
    batch_size: int | None = None  # null: the teacher's data.batch_size


@dataclass
class DistillConfig:
    task_name: str = "distill"
    tags: list[str] = field(default_factory=list)
    seed: int | None = None
    ckpt_path: str = MISSING  # the teacher
    resume: str | None = None
    compile: bool = False
    data_root: str | None = None
    method: ProgressiveMethod = field(default_factory=ProgressiveMethod)
    trainer: Trainer = field(default_factory=Trainer)
    sampler: Any = MISSING  # the final student's, typed at check time
    callbacks: Any = None
    logger: Any = None
    paths: Any = None


# ---- the options of the schedule and sampler groups ----------------------------------------------------------------


@dataclass
class Schedule:
    name: str = MISSING
    num_timesteps: int = MISSING


@dataclass
class LinearSchedule(Schedule):  # also quadratic and sigmoid
    beta_start: float = MISSING
    beta_end: float = MISSING


@dataclass
class CosineSchedule(Schedule):
    s: float = MISSING
    max_beta: float = MISSING


SCHEDULES = {"linear": LinearSchedule, "quadratic": LinearSchedule, "sigmoid": LinearSchedule}
SCHEDULES["cosine"] = CosineSchedule


@dataclass
class Sampler:
    """What every sampler node has; `steps` is required by all but ddpm (null there: all T steps)."""

    name: str = MISSING
    steps: int = MISSING
    spacing: str = "uniform"
    compile: bool = False


@dataclass
class DDPMSampler(Sampler):
    steps: int | None = None
    var_type: str | None = None


@dataclass
class DDIMSampler(Sampler):
    eta: float = 0.0


@dataclass
class SolverSampler(Sampler):  # dpm_solver_pp, sde_dpm_solver_pp, unipc
    order: int = 2


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler}
SAMPLERS |= {name: SolverSampler for name in ("dpm_solver_pp", "sde_dpm_solver_pp", "unipc")}


# ---- sample.py and evaluate.py -----------------------------------------------------------------------------------


@dataclass
class SampleConfig:
    task_name: str = "sample"
    ckpt_path: str = MISSING
    n: int = 64
    batch_size: int = 256
    seed: int = 0
    use_ema: bool = True
    output_dir: str | None = MISSING  # None only where the run has no folder yet (`--cfg job`)
    labels: Any = None  # null, all, a class number or a list of them
    per_class: int = 8
    guidance: float | None = None
    task: str = "sample"
    images: str = "held_out"
    mask: str = "center"
    jump_length: int = 10
    jump_n_sample: int = 1
    strength: float = 0.5
    frames: int = 8
    sampler: Any = MISSING
    paths: Any = None


@dataclass
class FIDSettings:
    n: int = 1000
    batch_size: int = 250
    seed: int = 12345
    weights_path: str | None = None
    cache_dir: str = MISSING
    reference_n: int | None = None
    reference_split: str = "held_out"  # or train: the paper's protocol for CIFAR-10


@dataclass
class NLLSettings:
    n: int = 500
    batch_size: int = 250
    seed: int = 0


@dataclass
class SweepSettings:
    samplers: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    guidance: list[float] = field(default_factory=list)


@dataclass
class ClassifierSettings:
    epochs: int = 20


@dataclass
class WandbSettings:
    enabled: bool = True
    project: str = "ddpm"
    offline: bool = True


@dataclass
class EvaluateConfig:
    task_name: str = "evaluate"
    ckpt_path: str = MISSING
    metrics: list[str] = field(default_factory=lambda: ["fid", "nll"])
    use_ema: bool = True
    data_root: str | None = None
    fid: FIDSettings = field(default_factory=FIDSettings)
    nll: NLLSettings = field(default_factory=NLLSettings)
    output_file: str = MISSING
    sweep: SweepSettings = field(default_factory=SweepSettings)
    guidance: float | None = None
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    sampler: Any = MISSING
    paths: Any = None


# ---- export.py and import.py: checkpoints to and from diffusers pipeline folders ---------------------------------


@dataclass
class Conversion:  # what export.py and import.py share: where the result goes
    out: str = MISSING
    paths: Any = None


@dataclass
class ExportConfig(Conversion):
    task_name: str = "export"
    ckpt_path: str = MISSING
    use_ema: bool = True


@dataclass
class ImportConfig(Conversion):
    task_name: str = "import"
    source: str = MISSING
    dataset: str | None = None  # a data option (conf/data); not `data`, which names that group


def register() -> None:
    """Put the schemas in Hydra's ConfigStore, where the defaults lists of conf/*.yaml find them."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="sample_schema", node=SampleConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="import_schema", node=ImportConfig)
    cs.store(name="distill_schema", node=DistillConfig)


# ---- checks ------------------------------------------------------------------------------------------------------


def type_error_sentence(exc: OmegaConfBaseException, key: str | None = None) -> str:
    """One sentence for an OmegaConf validation error: the key, what it must be, what it got."""
    key = key or getattr(exc, "full_key", None) or "a setting"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    wanted = {
        "Integer": "an integer",
        "Float": "a number",
        "Boolean": "true or false",
        "bool": "true or false",
        "ListConfig": "a list, like [a,b]",
    }
    kind = next((v for k, v in wanted.items() if k in msg), None)
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"{key} is not a setting here: check its spelling (add a new key with +{key}=...)"
    if kind is None:
        return f"{key}: {msg}"
    value = getattr(exc, "value", None)
    got = f", got {value!r}" if value is not None else ""
    example = {"an integer": "8", "a number": "0.5", "true or false": "true", "a list, like [a,b]": "[a,b]"}[
        kind
    ]
    if kind.startswith("a list") and isinstance(value, str):
        kind, example = "a list", f"[{value}]"
    return f"{key} must be {kind}{got}: set it like {key}={example}"


def check_named_node(node: DictConfig, schemas: dict[str, type], group: str) -> None:
    """Type-check a node whose keys depend on its `name` (a schedule, a sampler) against that option's dataclass."""
    name = node.get("name")
    if name not in schemas:
        raise ConfigError(f"unknown {group} {name!r}: choose one of {', '.join(schemas)}")
    try:
        OmegaConf.merge(OmegaConf.structured(schemas[name]), node)
    except OmegaConfBaseException as e:
        sub = getattr(e, "full_key", None) or ""
        raise ConfigError(type_error_sentence(e, f"{group}.{sub}" if sub else None)) from None


def _at_least(cfg: DictConfig, key: str, low: int | float, what: str = "") -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and value < low:
        raise ConfigError(f"{key} must be at least {low}{what}, got {value}")


def _finite_non_negative(key: str, value: Any) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key} must be a finite number >= 0 (0: no guidance), got {value}")


def check_sampler(node: DictConfig, group: str = "sampler") -> None:
    check_named_node(node, SAMPLERS, group)
    if node.get("steps") is not None and node.steps < 1:
        raise ConfigError(f"{group}.steps must be at least 1, got {node.steps}")


def check_train(cfg: DictConfig) -> None:
    """The ranges of train.py's settings (their types were checked when the config was composed)."""
    check_named_node(cfg.schedule, SCHEDULES, "schedule")
    check_sampler(cfg.sampler)
    for key in (
        "data.batch_size",
        "schedule.num_timesteps",
        "model.base_channels",
        "trainer.accumulate_grad_batches",
    ):
        _at_least(cfg, key, 1)
    _at_least(cfg, "trainer.log_every_n_steps", 1)
    for key in ("seed", "optim.warmup_steps", "data.num_workers", "data.split_seed"):
        _at_least(cfg, key, 0)
    for key in ("data.eval_batch_size", "data.global_batch_size"):  # null: derived
        _at_least(cfg, key, 1)
    max_steps = cfg.trainer.max_steps
    if max_steps == 0 or max_steps < -1:
        raise ConfigError(f"trainer.max_steps must be at least 1 (or -1: no limit), got {max_steps}")
    if not cfg.optim.lr > 0 or not math.isfinite(cfg.optim.lr):
        raise ConfigError(f"optim.lr must be a positive number, got {cfg.optim.lr}")
    if not 0 <= cfg.ema.decay < 1:
        raise ConfigError(f"ema.decay must be in [0, 1), got {cfg.ema.decay}")
    interval = cfg.trainer.get("val_check_interval")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ConfigError(
                f"trainer.val_check_interval must be a number of steps >= 1 (or a fraction of an epoch in (0, 1]), "
                f"got {interval!r}"
            )
        if isinstance(interval, float) and interval > 1:
            raise ConfigError(
                f"trainer.val_check_interval={interval} is a fraction of an epoch and must be at most 1: give a "
                f"number of steps as an integer, like trainer.val_check_interval={int(interval)}"
            )
    _finite_non_negative("condition.guidance", cfg.condition.guidance)


def check_distill(cfg: DictConfig) -> None:
    """The ranges of distill.py's own settings (the student's run config is then checked as train.py's is)."""
    m = cfg.method
    if m.name != "progressive":
        raise ConfigError(f"unknown method.name {m.name!r}: distill.py has progressive")
    _at_least(cfg, "method.teacher_steps", 2)
    for key in (
        "method.student_steps",
        "method.steps_per_round",
        "method.first_round_steps",
        "method.batch_size",
    ):
        _at_least(cfg, key, 1)
    _at_least(cfg, "method.warmup_steps", 0)
    _at_least(cfg, "method.matching_steps", 0)
    _at_least(cfg, "method.matching_at", 1)
    for key in ("lr", "matching_lr", "fake_lr"):
        if not m[key] > 0 or not math.isfinite(m[key]):
            raise ConfigError(f"method.{key} must be a positive number, got {m[key]}")
    if m.objective is not None and m.objective not in diffusion.OBJECTIVES:
        raise ConfigError(f"method.objective={m.objective!r}: leave it unset (the teacher's)")
    if m.decay not in ("constant", "cosine", "linear"):
        raise ConfigError(f"method.decay={m.decay!r}: choose constant, cosine or linear")
    if not 0 <= m.ema_decay < 1:
        raise ConfigError(f"method.ema_decay must be in [0, 1), got {m.ema_decay}")
    _finite_non_negative("method.guidance", m.guidance)


TASKS = ("sample", "inpaint", "img2img", "interpolate")


def check_sample(cfg: DictConfig) -> None:
    check_sampler(cfg.sampler)
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r}: choose one of {', '.join(TASKS)}")
    for key in ("n", "batch_size", "per_class", "jump_length", "jump_n_sample"):
        _at_least(cfg, key, 1)
    _at_least(cfg, "frames", 2)
    if not 0 <= cfg.strength <= 1:
        raise ConfigError(f"strength must be in [0, 1] (0: the input, 1: pure noise), got {cfg.strength}")
    _at_least(cfg, "seed", 0)
    _finite_non_negative("guidance", cfg.guidance)


METRICS = ("fid", "nll")
REFERENCE_SPLITS = ("held_out", "train")


def check_evaluate(cfg: DictConfig) -> None:
    check_sampler(cfg.sampler)
    if not cfg.metrics:
        raise ConfigError(f"metrics is empty: choose from {', '.join(METRICS)}, like metrics=[fid,nll]")
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise ConfigError(
            f"unknown metrics {unknown}: choose from {', '.join(METRICS)}, like metrics=[fid,nll]"
        )
    _at_least(cfg, "fid.n", 2, " (FID needs a covariance)")
    for key in ("fid.batch_size", "nll.n", "nll.batch_size", "classifier.epochs"):
        _at_least(cfg, key, 1)
    for key in ("fid.seed", "nll.seed"):
        _at_least(cfg, key, 0)
    _at_least(cfg, "fid.reference_n", 2, " (FID needs a covariance)")
    if cfg.fid.reference_split not in REFERENCE_SPLITS:
        raise ConfigError(
            f"fid.reference_split={cfg.fid.reference_split!r}: choose {' or '.join(REFERENCE_SPLITS)}"
        )
    _finite_non_negative("guidance", cfg.guidance)
    for w in cfg.sweep.guidance:
        _finite_non_negative("sweep.guidance", w)
    for s in cfg.sweep.steps:
        if s < 1:
            raise ConfigError(f"sweep.steps must all be at least 1, got {list(cfg.sweep.steps)}")
