"""Sampling and FID-feature throughput on this machine: python benchmarks/bench_sample.py (or make bench-sample).

Prints one markdown table. Every sampler row is measured in the same process on the same network (the default
CPU model of conf/train.yaml, random weights: speed does not depend on them), so the ratios between rows are
meaningful even on a noisy machine; figures are the median of --repeats runs after a warm-up, with min and max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from ddpm.build import build_module
from ddpm.config import compose_config
from ddpm.diffusion import make_sampler
from ddpm.host_memory import retain_freed_memory
from ddpm.images import to_rgb_uint8
from ddpm.metrics import make_fid

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16, help="images per sampling call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ddpm-repeats", type=int, default=1, help="DDPM-1000 is long: fewer repeats")
    parser.add_argument("--fid-images", type=int, default=100, help="images for the Inception timing")
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="Hydra overrides for the model, e.g. model=..."
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    retain_freed_memory()  # as sample.py and evaluate.py do

    cfg = compose_config(ROOT / "conf", "train", args.overrides)
    module = build_module(cfg).eval()
    net = module.ema.module.eval()
    shape = (args.batch, net.in_channels, net.image_size, net.image_size)
    x = torch.randn(shape)
    t = torch.randint(0, module.diffusion.num_timesteps, (args.batch,))

    # the forward timing is also the warm-up of the DDPM-1000 row, which runs first and is not repeated
    with torch.inference_mode():
        fwd = timed(lambda: net(x, t), max(20, args.repeats))
    net_s = statistics.median(fwd)

    rows = []
    for name, steps in (("ddpm", None), ("ddim", 100), ("ddim", 50), ("ddim", 20)):
        sampler = make_sampler(module.diffusion, name, steps=steps)
        repeats = args.ddpm_repeats if name == "ddpm" else args.repeats
        timed_net = TimedNetwork(net)

        def run(sampler=sampler, timed_net=timed_net):
            with torch.inference_mode():
                sampler.sample(timed_net, shape, generator=torch.Generator().manual_seed(0))

        times = _once(run, repeats) if name == "ddpm" else timed(run, repeats)
        nfe = len(sampler.timesteps)
        per_image = [s / args.batch for s in times]
        nfe_per_s = [nfe * args.batch / s for s in times]
        outside = 1 - timed_net.seconds / timed_net.total  # share of the loop spent outside the network
        rows.append((sampler.label, nfe, per_image, nfe_per_s, outside))

    metric = make_fid(os.environ.get("DDPM_FID_WEIGHTS"))
    images = to_rgb_uint8(
        torch.rand(args.fid_images, net.in_channels, net.image_size, net.image_size) * 2 - 1
    )
    fid_times = timed(lambda: metric.inception(images), 1)

    print(
        f"\nSampling with the default CPU model ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
        f"{net.image_size}x{net.image_size}x{net.in_channels}), batch {args.batch}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}. Median (min–max).\n"
    )
    print(
        "| sampler | network calls / image | s / image | network evaluations / s (images x steps) "
        "| time outside the network | speed-up vs DDPM-1000 |"
    )
    print("|---|---|---|---|---|---|")
    base = statistics.median(rows[0][2])
    for label, nfe, per_image, nfe_s, overhead in rows:
        print(
            f"| {label} | {nfe} | {fmt(per_image)} | {fmt(nfe_s, digits=0)} | {overhead * 100:.1f}% "
            f"| {base / statistics.median(per_image):.1f}x |"
        )
    print(f"\nNetwork forward alone at batch {args.batch}: {net_s * 1000:.1f} ms (median of {len(fwd)}).")
    print(
        f"Inception (FID features, resize to 299 included): {fmt(fid_times, 1000 / args.fid_images, 1)} s per "
        f"1000 images ({args.fid_images} timed)."
    )


class TimedNetwork(torch.nn.Module):
    """The network with a stopwatch: seconds spent inside its calls, against the sampler loop's total time."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seconds, self.total, self._start = net, 0.0, 0.0, None

    def forward(self, x, t):
        t0 = time.perf_counter()
        self._start = self._start or t0
        out = self.net(x, t)
        end = time.perf_counter()
        self.seconds += end - t0
        self.total = end - self._start
        return out


def _once(run, repeats: int) -> list[float]:
    """Timed runs with no warm-up run of their own (DDPM-1000 is too long to run twice): the caller warms the network
    up first (see the main block)."""
    out = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run()
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
