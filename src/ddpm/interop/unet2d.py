"""This project's UNet as diffusers' UNet2DModel and back: the config, and the weights key by key.

Both are Ho et al.'s DDPM UNet, and the details that could differ agree:
    time embedding    sin then cos of t * 10000^(-i / (half - 1)): UNet2DModel's flip_sin_to_cos=False, freq_shift=1
    normalisation     GroupNorm with eps 1e-6 and the same groups everywhere (ours caps the groups at a layer's
                      channels, so a layer narrower than num_groups cannot be expressed)
    attention         one 1x1 qkv convolution = to_q, to_k, to_v; the output 1x1 convolution = to_out.0; heads of
                      C / num_heads channels, scaled by 1 / sqrt(C / num_heads)
    downsampling      padding one pixel on every side (downsample_padding=1) or right and bottom only, as
                      TensorFlow's SAME (tf_padding; downsample_padding=0, which pads so explicitly)
    class embedding   num_classes + 1 rows, the last the null class (num_class_embeds)
    adaptive norm     scale_shift_norm = resnet_time_scale_shift "scale_shift"
What UNet2DModel has no input for (a self-conditioning estimate) is refused with a ConfigError.

`settings` below are the UNet's keyword arguments (`ddpm.build.network_settings`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ddpm.errors import ConfigError

NORM_EPS = 1e-6


def _levels(settings: dict[str, Any]) -> tuple[list[int], list[bool]]:
    """(channels of each level, whether each level has attention)."""
    base, size = settings["base_channels"], settings["image_size"]
    widths = [base * m for m in settings["channel_mult"]]
    attention = [size // 2**i in settings.get("attn_resolutions", ()) for i in range(len(widths))]
    return widths, attention


def unet2d_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The UNet2DModel config of the UNet that `settings` build; ConfigError for what it cannot express."""
    if settings.get("self_condition"):
        raise ConfigError(
            "diffusers' UNet2DModel has no input for a self-conditioning estimate: a model trained with "
            "diffusion.self_condition=true cannot be exported"
        )
    widths, attention = _levels(settings)
    groups, heads = settings.get("num_groups", 32), settings.get("num_heads", 1)
    if min(widths) < groups:
        raise ConfigError(
            f"a level of {min(widths)} channels has fewer than num_groups={groups} GroupNorm groups (this UNet "
            "then uses one group per channel, diffusers' UNet2DModel cannot): it cannot be exported"
        )
    attended = {w for w, a in zip(widths, attention, strict=True) if a} | {
        widths[-1]
    }  # the middle attends too
    if heads > 1 and len(attended) > 1:
        raise ConfigError(
            f"num_heads={heads} over attention layers of {sorted(attended)} channels: UNet2DModel gives every "
            "attention layer the same head width, so the head counts would differ: it cannot be exported"
        )
    num_classes = settings.get("num_classes")
    return {
        "sample_size": settings["image_size"],
        "in_channels": settings["in_channels"],
        "out_channels": settings.get("out_channels") or settings["in_channels"],
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": widths,
        "layers_per_block": settings["num_res_blocks"],
        "mid_block_scale_factor": 1,
        "downsample_padding": 0 if settings.get("tf_padding") else 1,
        "dropout": settings.get("dropout", 0.0),
        "act_fn": "silu",
        "attention_head_dim": None if heads == 1 else widths[-1] // heads,
        "norm_num_groups": groups,
        "attn_norm_num_groups": groups,
        "norm_eps": NORM_EPS,
        "resnet_time_scale_shift": "scale_shift" if settings.get("scale_shift_norm") else "default",
        "add_attention": True,
        "num_class_embeds": None if num_classes is None else num_classes + 1,
    }


def unet_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The UNet keyword arguments of a UNet2DModel config of DDPM layout; ConfigError for one of another layout."""
    expected = {
        "time_embedding_type": "positional",
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "act_fn": "silu",
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
        "class_embed_type": None,
        "mid_block_type": "UNetMidBlock2D",
        "downsample_type": "conv",
        "upsample_type": "conv",
        "add_attention": True,
    }
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ConfigError(
                f"this UNet2DModel has {key}={config[key]!r}, where Ho et al.'s DDPM layout that this project's UNet "
                f"has {value!r}: it cannot be imported"
            )
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    known = {"DownBlock2D", "AttnDownBlock2D"}
    if set(down) - known or [b.replace("Up", "Down") for b in reversed(up)] != down:
        raise ConfigError(
            f"down_block_types {down} and up_block_types {up} are not DDPM's (DownBlock2D / AttnDownBlock2D, "
            "mirrored by UpBlock2D / AttnUpBlock2D): it cannot be imported"
        )
    if abs(float(config.get("norm_eps", 1e-5)) - NORM_EPS) > 1e-12:
        raise ConfigError(
            f"norm_eps={config.get('norm_eps')}, where this project's UNet has {NORM_EPS}: not imported"
        )
    widths, size = list(config["block_out_channels"]), config["sample_size"]
    base = widths[0]
    if any(w % base for w in widths):
        raise ConfigError(
            f"block_out_channels {widths} are not multiples of the first: it cannot be imported"
        )
    groups = config.get("norm_num_groups", 32)
    if config.get("attn_norm_num_groups") not in (None, groups):
        raise ConfigError("attn_norm_num_groups differs from norm_num_groups: it cannot be imported")
    head_dim = config.get("attention_head_dim")
    heads = 1 if head_dim is None else widths[-1] // head_dim
    num_class_embeds = config.get("num_class_embeds")
    return {
        "image_size": size if isinstance(size, int) else size[0],
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "base_channels": base,
        "channel_mult": [w // base for w in widths],
        "num_res_blocks": config["layers_per_block"],
        "attn_resolutions": [size // 2**i for i, b in enumerate(down) if b == "AttnDownBlock2D"],
        "dropout": float(config.get("dropout", 0.0)),
        "num_heads": heads,
        "num_groups": groups,
        "scale_shift_norm": config.get("resnet_time_scale_shift", "default") == "scale_shift",
        "tf_padding": config.get("downsample_padding", 1) == 0,
        "num_classes": None if num_class_embeds is None else num_class_embeds - 1,
    }


def layer_pairs(settings: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(our layer, UNet2DModel's layer, kind) for every layer with weights, kind "attention" for the attention's
    input projections (one qkv convolution against three linears), "1x1" for its output projection (a 1x1
    convolution against a linear) and "same" for the others."""
    widths, attention = _levels(settings)
    levels, blocks = len(widths), settings["num_res_blocks"]

    def resnet(ours: str, theirs: str) -> list[tuple[str, str, str]]:
        names = [("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"), ("norm2", "norm2")]
        names += [("conv2", "conv2"), ("skip", "conv_shortcut")]
        return [(f"{ours}.{a}", f"{theirs}.{b}", "same") for a, b in names]

    def attend(ours: str, theirs: str) -> list[tuple[str, str, str]]:
        return [
            (f"{ours}.norm", f"{theirs}.group_norm", "same"),
            (f"{ours}.qkv", theirs, "attention"),
            (f"{ours}.proj", f"{theirs}.to_out.0", "1x1"),
        ]

    pairs = [("conv_in", "conv_in", "same"), ("temb.0", "time_embedding.linear_1", "same")]
    pairs += [("temb.2", "time_embedding.linear_2", "same"), ("class_emb", "class_embedding", "same")]
    i = 0  # our down path is one flat list: the blocks of every level, then its downsampler
    for level in range(levels):
        for r in range(blocks):
            pairs += resnet(f"down.{i}.0", f"down_blocks.{level}.resnets.{r}")
            if attention[level]:
                pairs += attend(f"down.{i}.1", f"down_blocks.{level}.attentions.{r}")
            i += 1
        if level != levels - 1:
            pairs.append((f"down.{i}.0.conv", f"down_blocks.{level}.downsamplers.0.conv", "same"))
            i += 1
    pairs += resnet("mid.0", "mid_block.resnets.0") + attend("mid.1", "mid_block.attentions.0")
    pairs += resnet("mid.2", "mid_block.resnets.1")
    j = 0
    for u, level in enumerate(reversed(range(levels))):
        for r in range(blocks + 1):
            pairs += resnet(f"up.{j}.0", f"up_blocks.{u}.resnets.{r}")
            if attention[level]:
                pairs += attend(f"up.{j}.1", f"up_blocks.{u}.attentions.{r}")
            if level != 0 and r == blocks:
                upsample = 2 if attention[level] else 1
                pairs.append((f"up.{j}.{upsample}.conv", f"up_blocks.{u}.upsamplers.0.conv", "same"))
            j += 1
    return pairs + [("norm_out", "conv_norm_out", "same"), ("conv_out", "conv_out", "same")]


def to_unet2d(state: dict[str, Tensor], settings: dict[str, Any]) -> dict[str, Tensor]:
    """Our UNet's state dict as UNet2DModel's; ValueError if a weight of ours is left over."""
    out, used = {}, set()
    for ours, theirs, kind in layer_pairs(settings):
        for p in ("weight", "bias"):
            key = f"{ours}.{p}"
            if key not in state:
                continue
            used.add(key)
            value = state[key]
            if kind == "attention":
                for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                    out[f"{theirs}.{name}.{p}"] = part.flatten(1) if p == "weight" else part
            else:
                out[f"{theirs}.{p}"] = value.flatten(1) if kind == "1x1" and p == "weight" else value
    left = sorted(set(state) - used)
    if left:
        raise ValueError(f"{len(left)} weight(s) of the UNet have no place in UNet2DModel, e.g. {left[0]}")
    return {k: v.contiguous() for k, v in out.items()}


def from_unet2d(state: dict[str, Tensor], settings: dict[str, Any]) -> dict[str, Tensor]:
    """UNet2DModel's state dict as our UNet's (the inverse of `to_unet2d`); ValueError if a weight is left over."""
    out, used = {}, set()
    for ours, theirs, kind in layer_pairs(settings):
        for p in ("weight", "bias"):
            if kind == "attention":
                keys = [f"{theirs}.{name}.{p}" for name in ("to_q", "to_k", "to_v")]
                if keys[0] not in state:
                    continue
                used.update(keys)
                value = torch.cat([state[k] for k in keys])
                out[f"{ours}.{p}"] = value[:, :, None, None] if p == "weight" else value
                continue
            key = f"{theirs}.{p}"
            if key not in state:
                continue
            used.add(key)
            value = state[key]
            out[f"{ours}.{p}"] = value[:, :, None, None] if kind == "1x1" and p == "weight" else value
    left = sorted(set(state) - used)
    if left:
        raise ValueError(
            f"{len(left)} weight(s) of the UNet2DModel have no place in this UNet, e.g. {left[0]}"
        )
    return out
