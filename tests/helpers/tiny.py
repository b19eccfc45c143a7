"""A tiny DiffusionModule, data loader and Trainer for in-process Lightning tests (seconds on a CPU)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from ddpm.data import UInt8Images
from ddpm.diffusion import GaussianDiffusion, make_beta_schedule
from ddpm.models import UNet
from ddpm.training import DiffusionModule


def tiny_unet(num_classes: int | None = None, self_condition: bool = False) -> UNet:
    """An 8x8 one-channel UNet of ~20k parameters (class-conditional with num_classes, taking an x_0 estimate with
    self_condition)."""
    return UNet(
        image_size=8,
        in_channels=1,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        num_groups=4,
        dropout=0.0,
        num_classes=num_classes,
        self_condition=self_condition,
    )


def tiny_module(**kwargs) -> DiffusionModule:
    return DiffusionModule(tiny_unet(), GaussianDiffusion(make_beta_schedule("linear", 100)), **kwargs)


def loader(n=32):
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    return DataLoader(UInt8Images(images), batch_size=8, drop_last=True)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
