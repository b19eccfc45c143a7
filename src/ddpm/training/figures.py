"""Pictures of the forward process, logged once at the start of a run so runs with different schedules compare."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from ddpm import reports
from ddpm.diffusion import GaussianDiffusion
from ddpm.images import save_grid


def frame_steps(num_timesteps: int, frames: int = 9) -> list[int]:
    """The 1-based steps t = 0, T/(frames-1), ..., T shown by `forward_process_frames` (0: the image itself)."""
    return [round(k * num_timesteps / (frames - 1)) for k in range(frames)]


def forward_process_frames(
    diffusion: GaussianDiffusion, x0: Tensor, frames: int = 9, seed: int = 0
) -> Tensor:
    """x_t ~ q(x_t | x_0) for one image at t = 0, T/(frames-1), ..., T, with one fixed eps for all t.

    t = 0 is the image itself; t = k T / (frames - 1) is the closed form at 1-based step k T / (frames - 1).
    """
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    steps = frame_steps(diffusion.num_timesteps, frames)[1:]
    t = torch.tensor([s - 1 for s in steps])  # 0-based index of step s
    x_t = diffusion.q_sample(x0.expand(len(steps), *x0.shape), t, eps.expand(len(steps), *x0.shape))
    return torch.cat([x0[None], x_t])


def schedule_figure(diffusion: GaussianDiffusion, path: Path, title: str = "") -> Path:
    """alphabar_t and log10 SNR(t) = log10(alphabar_t / (1 - alphabar_t)) against t, saved as a PNG."""
    t = torch.arange(1, diffusion.num_timesteps + 1)
    fig, (a, b) = reports.figure(size=(8, 3))
    a.plot(t, diffusion.alphas_cumprod.float())
    a.set(xlabel="t", ylabel="alphabar_t", title="signal kept: alphabar_t", ylim=(0, 1.02))
    b.plot(t, diffusion.snr.float().log10())
    b.set(xlabel="t", ylabel="log10 SNR", title="log10 SNR(t)")
    return reports.save_figure(fig, path, title, (a, b))


class ForwardProcessFigures(L.Callback):
    """Once, when a new run starts (not on resume): one held-out image dissolving into noise at t = 0, T/8, ..., T,
    and the schedule's alphabar and SNR curves; saved under `dirpath` and logged to W&B as `schedule/*`."""

    def __init__(self, dirpath: str | None = None, frames: int = 9, seed: int = 0) -> None:
        self.dirpath, self.frames, self.seed = dirpath, frames, seed

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:
            return
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "figures")
        folder.mkdir(parents=True, exist_ok=True)
        diffusion = pl_module.diffusion
        item = trainer.datamodule.val_set[0]
        x0 = (item[0] if isinstance(item, (tuple, list)) else item).float()
        frames = forward_process_frames(diffusion, x0, self.frames, self.seed)
        strip = save_grid(frames, folder / "forward_process.png", nrow=len(frames))
        name = trainer.lightning_module.hparams.get("config", {}).get("schedule", {}).get("name", "")
        curves = schedule_figure(
            diffusion, folder / "schedule.png", title=f"schedule: {name}" if name else ""
        )

        steps = frame_steps(diffusion.num_timesteps, self.frames)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key="schedule/forward_process",
                    images=[str(strip)],
                    caption=["t = " + ", ".join(map(str, steps))],
                    step=0,
                )
                logger.log_image(key="schedule/curves", images=[str(curves)], step=0)
