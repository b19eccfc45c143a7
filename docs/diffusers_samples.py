"""The picture of docs/evaluation.md: export a checkpoint with `python export.py`, then, with diffusers alone (nothing
of this project imported), load the folder with DDPMPipeline.from_pretrained and draw a grid of samples.

    python docs/diffusers_samples.py <run>/checkpoints/last.ckpt [--out docs/diffusers_pipeline_samples.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "diffusers_pipeline_samples.png")
    parser.add_argument(
        "--pipeline", type=Path, default=None, help="where to export (default: a temporary folder)"
    )
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.pipeline or Path(tmp) / "pipeline"
        export = [sys.executable, str(ROOT / "export.py"), f"ckpt_path={args.ckpt}", f"out={folder}"]
        proc = subprocess.run([*export, f"hydra.run.dir={Path(tmp) / 'run'}"], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr.strip() or proc.returncode)
        pipe = DDPMPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        steps = pipe.scheduler.config.num_train_timesteps  # the full ancestral chain
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed)
        images = pipe(
            batch_size=args.n, generator=generator, num_inference_steps=steps, output_type="np"
        ).images
        seconds = time.perf_counter() - start

    side = int(np.ceil(np.sqrt(args.n)))
    h, w, c = images.shape[1:]
    grid = np.ones((side * (h + 2), side * (w + 2), c), dtype=np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, side)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, col * (w + 2) + 1 : col * (w + 2) + 1 + w] = image
    pixels = (grid * 255 + 0.5).clip(0, 255).astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).resize(
        (grid.shape[1] * 3, grid.shape[0] * 3), 0
    ).save(args.out)
    print(f"{args.n} samples of DDPMPipeline ({steps} steps, {seconds:.0f} s) from {args.ckpt}: {args.out}")


if __name__ == "__main__":
    main()
