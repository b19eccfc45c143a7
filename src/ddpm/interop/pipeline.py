"""A checkpoint of this project as a diffusers DDPMPipeline folder, and such a folder as a checkpoint.

A pipeline folder holds model_index.json, unet/ (config.json and diffusion_pytorch_model.safetensors) and scheduler/
(scheduler_config.json); `export_pipeline` also writes ddpm_run_config.yaml beside them, the run config, so that
importing its own export gives back the run's data and training settings (diffusers ignores the file). Every problem
is one sentence (ConfigError), found before anything is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.build import build_module, network_settings
from ddpm.checkpoint import state_dict_mismatch
from ddpm.config import compose_config
from ddpm.errors import ConfigError
from ddpm.interop.ddpm_scheduler import process_settings, scheduler_config
from ddpm.interop.unet2d import from_unet2d, to_unet2d, unet2d_config, unet_settings
from ddpm.training import DiffusionModule

RUN_CONFIG = "ddpm_run_config.yaml"
# the data option of a foreign model, by (image size, channels), when the import does not name one
DATA_BY_SHAPE = {(32, 3): "cifar10", (28, 1): "mnist"}


def export_pipeline(module: DiffusionModule, cfg: DictConfig, out: Path, use_ema: bool = True) -> Path:
    """Write the DDPMPipeline of a trained module (its EMA weights, or the raw ones) and its run config to `out`
    (which must not exist or be empty); the folder appears whole or not at all."""
    settings = network_settings(cfg)
    unet_config = unet2d_config(
        settings
    )  # refuses what UNet2DModel cannot express, before anything is written
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    diffusion = OmegaConf.to_container(cfg.diffusion, resolve=True)
    sched_config = scheduler_config(schedule, diffusion, module.diffusion.betas)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists: choose another out= folder, or delete it first")

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    net = module.ema.module if use_ema else module.net
    state = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    unet = UNet2DModel(**unet_config)
    unet.load_state_dict(to_unet2d(state, settings), strict=True)
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**sched_config))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        (staging / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_pipeline(source: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(UNet2DModel config, its weights, DDPMScheduler config) of a pipeline folder; ConfigError for a folder that
    is missing, incomplete, corrupt or holds another kind of model."""
    if not source.is_dir():
        raise ConfigError(
            f"{source} is not a folder: set source to a diffusers pipeline folder (with unet/, scheduler/)"
        )
    unet_config = _read_json(source / "unet" / "config.json")
    scheduler = _read_json(source / "scheduler" / "scheduler_config.json")
    for what, config, kind in (
        ("unet", unet_config, "UNet2DModel"),
        ("scheduler", scheduler, "DDPMScheduler"),
    ):
        found = config.get("_class_name")
        if found not in (None, kind):
            raise ConfigError(f"{source / what} holds a {found}, not a {kind}: it is not a DDPM pipeline")
    return unet_config, _read_weights(source / "unet"), scheduler


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: source must be a diffusers pipeline folder (unet/ and scheduler/)"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e.__class__.__name__}): the folder is corrupt") from e


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    safetensors, pickled = (
        folder / "diffusion_pytorch_model.safetensors",
        folder / "diffusion_pytorch_model.bin",
    )
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors))
        if pickled.is_file():
            return torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"the weights in {folder} could not be read ({e.__class__.__name__}): the file is corrupt"
        ) from e
    raise ConfigError(
        f"{folder} holds no diffusion_pytorch_model.safetensors (or .bin): the weights are missing"
    )


def import_pipeline(source: Path, data: str | None = None) -> tuple[DiffusionModule, DictConfig]:
    """The module (its network and EMA both the pipeline's weights) and run config of a pipeline folder.

    The network, schedule and objective come from the folder's configs. The rest of the run config is the one an
    export of this project stored beside them, or else the defaults of train.py with data=`data` (by default the
    data option of the image size: 32x32 RGB cifar10, 28x28 grey mnist) and Ho et al.'s recipe."""
    unet_config, weights, scheduler = read_pipeline(source)
    settings = unet_settings(unet_config)
    schedule, diffusion = process_settings(scheduler)
    cfg = _base_run_config(source, settings, data)
    learned = diffusion["var_type"] == "learned_range"
    if learned and settings["out_channels"] != 2 * settings["in_channels"]:
        raise ConfigError(
            "variance_type=learned_range needs a UNet with twice the image channels out: not imported"
        )
    model = {**OmegaConf.to_container(cfg.model), **settings, "_target_": "ddpm.models.UNet"}
    model["out_channels"] = (
        None if learned or settings["out_channels"] == settings["in_channels"] else model["out_channels"]
    )
    cfg.model, cfg.schedule = model, schedule
    cfg.diffusion = {**OmegaConf.to_container(cfg.diffusion), **diffusion}
    cfg.data.image_size, cfg.data.channels = settings["image_size"], settings["in_channels"]
    module = build_module(cfg)
    try:
        state = from_unet2d(weights, network_settings(cfg))
    except ValueError as e:
        raise ConfigError(f"{source / 'unet'}: {e}: its config and weights do not agree") from e
    problem = state_dict_mismatch(module.net.state_dict(), state)
    if problem:
        raise ConfigError(
            f"the weights in {source / 'unet'} do not fit the UNet its config describes ({problem})"
        )
    module.net.load_state_dict(state)
    module.ema.module.load_state_dict(state)
    return module, cfg


def _base_run_config(source: Path, settings: dict[str, Any], data: str | None) -> DictConfig:
    stored = source / RUN_CONFIG
    if stored.is_file():
        cfg = OmegaConf.load(stored)
        if data is not None and data != cfg.data.source:
            cfg.data = compose_config(overrides=[f"data={data}"]).data
        return cfg
    shape = (settings["image_size"], settings["in_channels"])
    data = data or DATA_BY_SHAPE.get(shape)
    if data is None:
        raise ConfigError(
            f"which data does this {shape[0]}x{shape[0]}x{shape[1]} model belong to? name it: dataset=<option of "
            "conf/data>, e.g. dataset=image_folder"
        )
    overrides = [f"data={data}", "recipe=paper", "logger=none"]
    cfg = compose_config(overrides=overrides, output_dir=tempfile.gettempdir())
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def save_checkpoint(module: DiffusionModule, cfg: DictConfig, out: Path, source: Path) -> Path:
    """A checkpoint that sample.py and evaluate.py load: the module's weights and the run config (step 0)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": {"config": OmegaConf.to_container(cfg, resolve=True)},
        "global_step": 0,
        "ddpm_format": 1,
        "imported_from": str(source),
    }
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(out)
    return out
