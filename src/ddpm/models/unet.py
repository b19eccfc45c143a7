"""The noise-conditional UNet of Ho et al. (2020), a PixelCNN++-style backbone eps_theta(x_t, t)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.models.layers import (
    AttnBlock,
    Downsample,
    ResBlock,
    Upsample,
    group_norm,
    timestep_embedding,
    zero_module,
)


class UNet(nn.Module):
    """eps_theta(x_t, t): a UNet whose residual blocks all receive an MLP of the sinusoidal embedding of t.

    Args:
        image_size: input height = width; must be divisible by 2^(len(channel_mult) - 1).
        in_channels / out_channels: image channels (out defaults to in).
        base_channels: channels at full resolution; level i has base_channels * channel_mult[i].
        channel_mult: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up, as in DDPM).
        attn_resolutions: resolutions (e.g. 16 for 16x16) with self-attention after each residual block.
        dropout: dropout inside residual blocks.
        num_heads: attention heads (DDPM uses 1).
        num_groups: GroupNorm groups (32 in DDPM; capped at the channel count).
        channels_last: keep activations in channels_last memory format (faster 3x3 convolutions on CPU and GPU).
        num_classes: class-conditional (Ho & Salimans 2021): a learned embedding of the class y in 0..num_classes-1,
            or of the null class num_classes (the unconditional model, y=None), is added to the time embedding.
            None: unconditional, no embedding.
        self_condition: the network also takes an estimate x_cond of x_0 (Chen et al. 2022), concatenated to x_t as
            in_channels more input channels (zeros when the caller has none).
        scale_shift_norm: time (and class) condition every residual block by adaptive GroupNorm, GN(h) (1 + s) + b
            (Dhariwal & Nichol 2021), instead of adding it to h before the norm (DDPM's).
        tf_padding: pad each stride-2 downsampling convolution on the right and bottom only, as TensorFlow's SAME
            padding (Ho et al.'s code) does, instead of on every side: needed to run Ho et al.'s released weights.
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
        num_groups: int = 32,
        channels_last: bool = False,
        num_classes: int | None = None,
        self_condition: bool = False,
        scale_shift_norm: bool = False,
        tf_padding: bool = False,
    ) -> None:
        super().__init__()
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive whole number or null, got {num_classes!r}")
        channel_mult = tuple(channel_mult)
        attn_resolutions = tuple(attn_resolutions)
        check_unet_config(
            image_size, base_channels, channel_mult, num_res_blocks, attn_resolutions, num_groups
        )
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.base_channels = base_channels
        self.channels_last = channels_last
        self.self_condition = bool(self_condition)
        self.tf_padding = bool(tf_padding)
        temb_dim = 4 * base_channels

        self.temb = nn.Sequential(
            nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )
        self.num_classes = num_classes
        if num_classes is not None:
            # row num_classes is the null class; it starts at zero, so an untrained null class adds nothing
            self.class_emb = nn.Embedding(num_classes + 1, temb_dim)
            nn.init.zeros_(self.class_emb.weight[num_classes])
        self.conv_in = nn.Conv2d(in_channels * (2 if self_condition else 1), base_channels, 3, padding=1)

        # Down path: remember the channels of every activation that is skipped across to the up path.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        res_block = partial(
            ResBlock, temb_dim=temb_dim, dropout=dropout, num_groups=num_groups, scale_shift=scale_shift_norm
        )
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([res_block(ch, base_channels * mult)])
                ch = base_channels * mult
                if res in attn_resolutions:
                    block.append(AttnBlock(ch, num_heads, num_groups))
                self.down.append(block)
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch, tf_padding)]))
                skip_channels.append(ch)
                res //= 2

        self.mid = nn.ModuleList(
            [
                res_block(ch, ch),
                AttnBlock(ch, num_heads, num_groups),
                res_block(ch, ch),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                block = nn.ModuleList([res_block(ch + skip_channels.pop(), base_channels * mult)])
                ch = base_channels * mult
                if res in attn_resolutions:
                    block.append(AttnBlock(ch, num_heads, num_groups))
                if level != 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                    res *= 2
                self.up.append(block)

        self.norm_out = group_norm(ch, num_groups)
        self.conv_out = zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, x_cond: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W] noisy images x_t; t: int64 [B] 0-based timesteps; y: int64 [B] classes (num_classes: the
        null class; None: all null) of a class-conditional UNet; x_cond: [B, C, H, W] the estimate of x_0 of a
        self-conditioned UNet (None: zeros). Returns [B, out_channels, H, W]."""
        if self.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x_cond is None else x_cond.to(x.dtype)], dim=1)
        elif x_cond is not None:
            raise ValueError("this UNet is not self-conditioned (self_condition=False): it takes no x_cond")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        temb = self.temb(timestep_embedding(t, self.base_channels))
        if self.num_classes is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes)
            temb = temb + self.class_emb(y)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=None): it takes no class labels")
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = _run(block, h, temb)
            skips.append(h)
        h = _run(self.mid, h, temb)
        for block in self.up:
            h = _run(block, torch.cat([h, skips.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def _run(layers: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
    for layer in layers:
        h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
    return h


def check_unet_config(
    image_size: int,
    base_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    num_groups: int,
) -> None:
    """Raise ValueError with one sentence saying what to change if the UNet cannot be built for this input."""
    levels = len(channel_mult)
    if levels < 1 or num_res_blocks < 1 or base_channels < 1:
        raise ValueError(
            "the UNet needs at least one level, one residual block per level and one base channel"
        )
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise ValueError(
            f"image_size {image_size} cannot be halved {levels - 1} times by a UNet with {levels} levels "
            f"(channel_mult={list(channel_mult)}): use an image size divisible by {factor} or fewer levels"
        )
    resolutions = [image_size // 2**i for i in range(levels)]
    unreachable = [r for r in attn_resolutions if r not in resolutions]
    if unreachable:
        raise ValueError(
            f"attn_resolutions {unreachable} are not resolutions of this UNet (it has {resolutions}): "
            "pick attention resolutions from that list"
        )
    for ch in {base_channels * m for m in channel_mult}:
        if ch % min(num_groups, ch):
            raise ValueError(
                f"{ch} channels are not divisible into {num_groups} GroupNorm groups: change num_groups"
            )
