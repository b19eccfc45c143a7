"""Lightning glue: the DiffusionModule (training_step, EMA) and one callback per file."""

from ddpm.training.checkpoint_io import AtomicCheckpointIO
from ddpm.training.distillation import DistillationRounds, ProgressiveDistillation
from ddpm.training.ema import EMA, ema_decay_at
from ddpm.training.figures import ForwardProcessFigures
from ddpm.training.headless_progress import HeadlessProgress
from ddpm.training.last_checkpoint import LastCheckpoint
from ddpm.training.module import DiffusionModule, NonFiniteLossError
from ddpm.training.progress_bar import StepProgressBar
from ddpm.training.run_clock import RunClock
from ddpm.training.sample_fid import SampleFID
from ddpm.training.sample_grid import SampleGrid
from ddpm.training.wandb_logger import WandbLogger

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "DiffusionModule",
    "DistillationRounds",
    "ForwardProcessFigures",
    "HeadlessProgress",
    "LastCheckpoint",
    "NonFiniteLossError",
    "ProgressiveDistillation",
    "RunClock",
    "SampleFID",
    "SampleGrid",
    "StepProgressBar",
    "WandbLogger",
    "ema_decay_at",
]
