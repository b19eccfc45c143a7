"""Inpainting quality of a checkpoint: python benchmarks/bench_inpaint.py --ckpt <run>/checkpoints/last.ckpt
(or make bench-inpaint CKPT=...).

The first n held-out images with the centre mask (the middle half of each side unknown) are filled three ways, and
each set of n filled images is scored against the held-out split (FID, KID) with the error on the unknown pixels:

    mean image     the unknown pixels from the mean of the training images (a baseline with no model)
    replacement    the sampler's chain with the known pixels replaced at every step (RePaint without resampling)
    RePaint        the same with RePaint's resampling (--jump-length, --jump-n-sample)

The sampler is ancestral DDPM over 100 respaced steps unless --sampler says otherwise.

Prints one markdown table, with the date, the machine and the command. Needs the FID Inception weights
($DDPM_FID_WEIGHTS offline).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch

from ddpm.build import build_sampler
from ddpm.checkpoint import load_checkpoint
from ddpm.config import compose_config
from ddpm.diffusion.editing import inpaint
from ddpm.host_memory import retain_freed_memory
from ddpm.metrics import install_reference, make_fid, score_samples
from ddpm.metrics.kid import format_kid

ROOT = Path(__file__).resolve().parents[1]


def centre_mask(size: int) -> torch.Tensor:
    mask = torch.ones(1, 1, size, size)
    mask[..., size // 4 : size - size // 4, size // 4 : size - size // 4] = 0
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--n", type=int, default=500, help="held-out images to fill (and the FID's N)")
    parser.add_argument("--batch", type=int, default=100)
    # RePaint's own chain is ancestral DDPM; on the default checkpoint (2026-12-06) its resampling beat plain
    # replacement there, but not with the default 20-step SDE-DPM-Solver++ (benchmarks/README.md)
    parser.add_argument(
        "--sampler",
        nargs="*",
        default=["sampler=ddpm", "sampler.steps=100"],
        help="sample.py overrides of the sampler",
    )
    parser.add_argument("--jump-length", type=int, default=10)
    parser.add_argument("--jump-n-sample", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default=str(ROOT / ".cache" / "fid"), help="the reference statistics' cache"
    )
    args = parser.parse_args()
    retain_freed_memory()
    module, run_cfg = load_checkpoint(args.ckpt)
    sampler = build_sampler(module.diffusion, compose_config(ROOT / "conf", "sample", args.sampler).sampler)
    weights = compose_config(ROOT / "conf", "evaluate").fid.weights_path
    metric = make_fid(weights)
    datamodule = hydra.utils.instantiate(run_cfg.data)
    datamodule.setup("validate")
    held_out = datamodule.val_set
    n = min(args.n, len(held_out))
    n_ref = install_reference(metric, datamodule, args.cache_dir, None, weights)
    image = lambda x: x[0] if isinstance(x, (list, tuple)) else x  # noqa: E731
    originals = torch.stack([image(held_out[i]) for i in range(n)])
    train = datamodule.train_set
    mean_image = torch.stack([image(train[i]) for i in range(min(len(train), 5000))]).mean(0, keepdim=True)
    mask = centre_mask(originals.shape[-1])

    def fill(method: str, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if method == "mean image":
            return mask * x0 + (1 - mask) * mean_image
        jumps = (1, 1) if method == "replacement" else (args.jump_length, args.jump_n_sample)
        net, _ = module.reverse_model(x0.shape[0], use_ema=True)
        with module.evaluating():
            return inpaint(
                sampler, net, x0, mask, generator=generator, jump_length=jumps[0], jump_n_sample=jumps[1]
            )

    rows = []
    for method in ("mean image", "replacement", "RePaint"):
        start = time.perf_counter()
        batches = iter(originals.split(args.batch))  # score_samples asks for the n in batches of args.batch
        filled: list[torch.Tensor] = []

        def draw(
            count: int, generator: torch.Generator, method=method, batches=batches, filled=filled
        ) -> torch.Tensor:
            x0 = next(batches)
            assert x0.shape[0] == count
            filled.append(fill(method, x0, generator))
            return filled[-1]

        scores = score_samples(metric, draw, n, args.batch, args.seed)
        result = torch.cat(filled)
        mse = float(
            ((result - originals) ** 2 * (1 - mask)).sum() / ((1 - mask).sum() * n * originals.shape[1])
        )
        rows.append((method, scores, mse, time.perf_counter() - start))
        print(f"{method}: FID {scores['fid']:.2f}, KID {scores['kid']:.4f}, MSE {mse:.4f}", file=sys.stderr)

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    isa = torch.backends.cpu.get_cpu_capability()
    print(
        f"\nInpainting the centre of {n} held-out {run_cfg.data.source} images ({args.ckpt}), scored against the "
        f"{n_ref} held-out images; {sampler.label}, RePaint jump_length={args.jump_length}, "
        f"jump_n_sample={args.jump_n_sample}; {when}, {platform.processor() or platform.machine()} ({isa}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}; `python benchmarks/bench_inpaint.py "
        f"{' '.join(sys.argv[1:])}`\n"
    )
    print("| fill | FID | KID × 10³ | MSE on the unknown pixels | seconds |")
    print("|---|---:|---:|---:|---:|")
    for method, scores, mse, seconds in rows:
        print(
            f"| {method} | {scores['fid']:.2f} | {format_kid(scores['kid'], scores['kid_std'], 1e3, 2, note='')} | "
            f"{mse:.4f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
