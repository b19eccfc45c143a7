"""Lightning glue: the DiffusionModule (training_step, EMA) and callbacks."""

from ddpm.training.callbacks import SampleFID, SampleGrid, StepProgressBar, to_unit_interval
from ddpm.training.ema import EMA, ema_decay_at
from ddpm.training.figures import ForwardProcessFigures
from ddpm.training.last_checkpoint import LastCheckpoint
from ddpm.training.module import DiffusionModule, NonFiniteLossError

__all__ = [
    "EMA",
    "DiffusionModule",
    "ForwardProcessFigures",
    "LastCheckpoint",
    "NonFiniteLossError",
    "SampleFID",
    "SampleGrid",
    "StepProgressBar",
    "ema_decay_at",
    "to_unit_interval",
]
