"""`python sample.py ckpt_path=...`: draw images from a checkpoint with the configured sampler; PNG grid + .npz."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.build import build_sampler
from ddpm.checkpoint import load_checkpoint
from ddpm.cli.conditional import refuse_unless_conditional
from ddpm.cli.edit import edit
from ddpm.cli.errors import check_writable, run_job
from ddpm.cli.student import sampler_chosen, sampler_for
from ddpm.diffusion.guidance import spread_labels
from ddpm.errors import ConfigError
from ddpm.host_memory import retain_freed_memory
from ddpm.images import save_grid, to_uint8
from ddpm.progress import progress_bar
from ddpm.schema import check_sample

log = logging.getLogger(__name__)


def sample(cfg: DictConfig) -> dict[str, Any]:
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"these config values must be set: {', '.join(sorted(missing))}")
    check_sample(cfg)  # ranges; the types were checked when Hydra composed the config (ddpm.schema)
    out = check_writable(Path(cfg.output_dir), "output_dir")
    retain_freed_memory()  # no page faults on each batch's activations: see ddpm.host_memory
    module, run_cfg = load_checkpoint(cfg.ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    sampler = build_sampler(module.diffusion, sampler_for(cfg.sampler, run_cfg, sampler_chosen()))
    refuse_unless_conditional(
        cfg.ckpt_path, module.num_classes, {"labels": cfg.labels, "guidance": cfg.guidance}
    )
    if cfg.task != "sample":  # inpaint, img2img, interpolate: the checkpoint edits images
        return edit(cfg, module, run_cfg, sampler, out, device)
    labels, nrow = requested_labels(cfg, module.num_classes)
    guidance = cfg.get("guidance")
    n_total = cfg.n if labels is None else len(labels)
    if (
        module.num_classes is not None and labels is None
    ):  # the classes spread evenly over all n, across batches
        labels = spread_labels(n_total, module.num_classes)

    chunks = []
    for start in range(0, n_total, cfg.batch_size):
        generator = torch.Generator(device=device).manual_seed(cfg.seed + start)
        n = min(cfg.batch_size, n_total - start)
        kwargs = {}
        if module.num_classes is not None:
            kwargs = {"labels": labels[start : start + n], "guidance": guidance}
        chunks.append(
            to_uint8(
                module.sample(
                    sampler, n, generator=generator, use_ema=cfg.use_ema, progress=progress_bar, **kwargs
                )
            )
        )
        log.info("sampled %d / %d images", start + n, n_total)
    images = torch.cat(chunks).cpu()

    arrays = {"images": images.permute(0, 2, 3, 1).numpy()}
    if module.num_classes is not None:
        arrays["labels"] = labels.numpy()
    np.savez_compressed(out / "samples.npz", **arrays)
    save_grid(images, out / "samples.png", nrow=nrow)
    w = module.hparams.guidance if guidance is None else guidance
    calls = len(sampler.timesteps)
    cost = (
        f"{calls} network calls per image, each on the image and its unconditional twin (guidance {w:g})"
        if module.num_classes is not None and w
        else f"{calls} network calls per image"
    )
    log.info("wrote %s and %s (%s, %s)", out / "samples.png", out / "samples.npz", sampler.label, cost)
    return {"png": str(out / "samples.png"), "npz": str(out / "samples.npz"), "sampler": sampler.label}


def requested_labels(cfg: DictConfig, num_classes: int | None) -> tuple[torch.Tensor | None, int | None]:
    """(labels, grid row length) of `labels`: null (the default spread), a list of classes, or `all` (per_class
    images of every class, one grid row per class); ConfigError for labels outside the model's classes."""
    spec = cfg.get("labels")
    if (
        spec is None or num_classes is None
    ):  # (labels of an unconditional checkpoint: refuse_unless_conditional)
        return None, None
    if spec == "all":
        if cfg.per_class < 1:
            raise ConfigError("per_class must be at least 1")
        return torch.arange(num_classes).repeat_interleave(cfg.per_class), cfg.per_class
    values = list(spec) if not isinstance(spec, (int, str)) else [spec]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"labels must be all, or a list of class numbers like labels=[3,3,7], got {spec}")
    outside = [v for v in values if not 0 <= v < num_classes]
    if outside:
        raise ConfigError(
            f"labels {outside} are outside this model's classes 0..{num_classes - 1}: use labels in that range"
        )
    return torch.tensor(values, dtype=torch.long), None


def main(cfg: DictConfig) -> Any:
    return run_job(lambda: sample(cfg), interrupted="interrupted: sampling stopped, no images were written")
