"""`python sample.py task=inpaint|img2img|interpolate`: a checkpoint edits images (ddpm.diffusion.editing) instead of
drawing them from noise. Every input problem (missing files, images or a mask of another shape) is one sentence
before any network call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor

from ddpm.build import build_held_out_data
from ddpm.diffusion import editing
from ddpm.errors import ConfigError
from ddpm.images import save_grid, to_uint8
from ddpm.progress import progress_bar

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_images(spec: str, n: int, shape: tuple[int, int, int], run_cfg: DictConfig) -> Tensor:
    """The first n input images in [-1, 1], [n, C, H, W]: `held_out` (the checkpoint's held-out split), a folder of
    image files (sorted by name) or an .npz with uint8 `images` [N, H, W, C] (what sample.py writes)."""
    channels, size = shape[0], shape[1]
    if spec == "held_out":
        held_out = build_held_out_data(run_cfg).val_set
        items = [held_out[i] for i in range(min(n, len(held_out)))]
        return torch.stack([x[0] if isinstance(x, (list, tuple)) else x for x in items])
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
        if not files:
            raise ConfigError(
                f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}): set images to another folder"
            )
        arrays = []
        for f in files:
            with Image.open(f) as img:
                arrays.append(
                    np.asarray(img.convert("L" if channels == 1 else "RGB")).reshape(
                        img.height, img.width, -1
                    )
                )
        sizes = {a.shape[:2] for a in arrays}
        if sizes != {(size, size)}:
            raise ConfigError(
                f"the images in {path} are {sorted(sizes)} pixels; this checkpoint's are {size}x{size}: resize them"
            )
        u8 = np.stack(arrays)
    elif path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "images" not in data:
                raise ConfigError(f"{path} has no `images` array (uint8 [N, H, W, C], as sample.py writes)")
            u8 = data["images"][:n]
        if u8.ndim != 4 or u8.shape[1:] != (size, size, channels):
            raise ConfigError(
                f"the images in {path} have shape {tuple(u8.shape[1:])}; this checkpoint's are {(size, size, channels)} "
                "(H, W, C)"
            )
    else:
        raise ConfigError(f"images={spec}: not held_out, a folder of images or an .npz file that exists")
    return torch.from_numpy(np.ascontiguousarray(u8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def load_mask(spec: str, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """[1, 1, H, W], 1 where the pixel is known: `center` (the middle half of each side unknown), `left` (the left
    half known), `random` (each pixel known with probability 1/2, from the seed) or a PNG of the image's size (white:
    known)."""
    size = shape[1]
    mask = torch.ones(1, 1, size, size)
    if spec == "center":
        lo, hi = size // 4, size - size // 4
        mask[..., lo:hi, lo:hi] = 0
    elif spec == "left":
        mask[..., size // 2 :] = 0
    elif spec == "random":
        mask = (torch.rand(1, 1, size, size, generator=generator) < 0.5).float()
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"mask={spec}: not center, left, random or a mask image that exists")
        with Image.open(path) as img:
            if img.size != (size, size):
                raise ConfigError(
                    f"the mask {path} is {img.width}x{img.height}; the images are {size}x{size}"
                )
            mask = torch.from_numpy(np.asarray(img.convert("L")) >= 128).float()[None, None]
    return mask


def one_class(spec: Any, num_classes: int | None) -> int | None:
    """The class of labels=<class> for an edit of a class-conditional checkpoint (None: not given)."""
    if spec is None or num_classes is None:
        return None
    values = [spec] if isinstance(spec, int) else list(spec) if not isinstance(spec, str) else []
    if len(values) != 1 or not isinstance(values[0], int) or not 0 <= values[0] < num_classes:
        raise ConfigError(f"an edit takes one class, labels=<0..{num_classes - 1}>, got labels={spec}")
    return values[0]


def edit(
    cfg: DictConfig, module, run_cfg: DictConfig, sampler, out: Path, device: torch.device
) -> dict[str, Any]:
    """Run cfg.task on the input images; writes <task>.png (a grid, one row per kind of image) and <task>.npz."""
    shape = (module.net.in_channels, module.net.image_size, module.net.image_size)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    n = 2 if cfg.task == "interpolate" else cfg.n
    if (
        cfg.task == "interpolate" and cfg.images == "seeds"
    ):  # between the starting noise of seeds seed and seed + 1
        pair = [torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed + i)) for i in (0, 1)]
        images = torch.stack(pair).to(device)  # noise, not images: decoded below, never inverted
    else:
        images = load_images(str(cfg.images), n, shape, run_cfg).to(device)
    if cfg.task == "interpolate" and images.shape[0] < 2:
        raise ConfigError(f"interpolate needs two images, images={cfg.images} has {images.shape[0]}")
    if cfg.task == "inpaint":
        mask = load_mask(str(cfg.mask), shape, torch.Generator().manual_seed(cfg.seed)).to(device)
    count = images.shape[0]  # inpaint and img2img: one network wrapper for the batch
    label = one_class(
        cfg.get("labels"), module.num_classes
    )  # None: a conditional network's classes spread evenly

    def model_for(k: int):
        labels = None if label is None else torch.full((k,), label, dtype=torch.long)
        return module.reverse_model(k, labels=labels, guidance=cfg.get("guidance"), use_ema=cfg.use_ema)[0]

    with module.evaluating(cfg.use_ema):
        if cfg.task == "inpaint":
            result = editing.inpaint(
                sampler,
                model_for(count),
                images,
                mask,
                generator=generator,
                jump_length=cfg.jump_length,
                jump_n_sample=cfg.jump_n_sample,
                progress=progress_bar,
            )
            rows = [
                images,
                images * mask + (1 - mask) * -1.0,
                result,
            ]  # original, masked (unknown black), filled
        elif cfg.task == "img2img":  # (images=seeds is for interpolate only)
            result = editing.img2img(
                sampler, model_for(count), images, cfg.strength, generator=generator, progress=progress_bar
            )
            rows = [images, result]
        else:
            # both images are encoded, and the path decoded, with one class (labels=<class>; default 0)
            label = 0 if label is None and module.num_classes is not None else label
            encoder, decoder = model_for(2), model_for(cfg.frames)
            if cfg.images == "seeds":
                result = editing.interpolate_noise(sampler, decoder, images[:1], images[1:2], cfg.frames)
            else:
                result = editing.interpolate(
                    sampler, decoder, images[:1], images[1:2], cfg.frames, encoder=encoder
                )
            rows = [result]
    grid = torch.cat(rows)
    save_grid(grid, out / f"{cfg.task}.png", nrow=rows[0].shape[0])
    arrays = {"images": to_uint8(result).permute(0, 2, 3, 1).cpu().numpy()}
    arrays["inputs"] = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    np.savez_compressed(out / f"{cfg.task}.npz", **arrays)
    log.info("wrote %s and %s (%s)", out / f"{cfg.task}.png", out / f"{cfg.task}.npz", sampler.label)
    return {
        "png": str(out / f"{cfg.task}.png"),
        "npz": str(out / f"{cfg.task}.npz"),
        "sampler": sampler.label,
    }
