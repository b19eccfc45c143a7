"""The paper's CIFAR-10 model on a GPU: python benchmarks/bench_gpu.py (or make bench-gpu).

Prints one markdown table for `experiment=ddpm_cifar10` (the 35.7M-parameter UNet, batch 128) on one device:
training steps/s through our LightningModule + Trainer (bf16-mixed autocast, float32 diffusion math; eager and
with compile=true), sampling img/s with DDPM-1000 and DDIM-50 (eager and with sampler.compile=true, i.e.
CUDA graphs), and the time of a 10k-sample FID (DDIM-50 samples + Inception features, reference statistics
excluded). Random weights and random CIFAR-shaped data: speed does not depend on them.

On a CPU it runs too (`--device cpu --overrides model=unet_small ...` with small counts), which is how it is tested.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sample import TimedNetwork, fmt  # noqa: E402
from bench_train import fit_seconds_per_step, sync  # noqa: E402

from ddpm.build import build_module  # noqa: E402
from ddpm.config import compose_config  # noqa: E402
from ddpm.diffusion import make_sampler  # noqa: E402
from ddpm.host_memory import retain_freed_memory  # noqa: E402
from ddpm.images import to_rgb_uint8  # noqa: E402
from ddpm.metrics import make_fid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_steps_per_s(cfg, device, batch: int, warmup: int, steps: int, compile: bool) -> float:
    """Optimizer steps/s through L.Trainer (the configured precision on CUDA, fp32 elsewhere)."""
    cfg.compile = compile
    precision = cfg.trainer.precision if device.type == "cuda" else "32-true"
    shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    return 1 / fit_seconds_per_step(build_module(cfg), shape, batch, warmup, steps, device, precision)


def sample_images_per_s(module, sampler, batch: int, device, repeats: int) -> tuple[list[float], float]:
    """img/s of `repeats` timed chains after one warm-up chain, and the share of time outside the network."""
    net = module.ema.module.eval()
    shape = (batch, net.in_channels, net.image_size, net.image_size)
    timed_net = TimedNetwork(net)
    rates = []
    for r in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            sampler.sample(timed_net if not sampler.compile else net, shape, device=device)
        sync(device)
        if r:  # the first chain warms up (and compiles)
            rates.append(batch / (time.perf_counter() - t0))
    outside = 1 - timed_net.seconds / timed_net.total if timed_net.total else float("nan")
    return rates, outside


def fid_seconds(module, device, n: int, batch: int, weights: str | None) -> tuple[float, float]:
    """(seconds to draw n DDIM-50 samples, seconds for their Inception features)."""
    metric = make_fid(weights).to(device)
    sampler = make_sampler(module.diffusion, "ddim", steps=50)
    sample_s = feature_s = 0.0
    for start in range(0, n, batch):
        k = min(batch, n - start)
        sync(device)
        t0 = time.perf_counter()
        images = module.sample(sampler, k)
        sync(device)
        t1 = time.perf_counter()
        metric.update(to_rgb_uint8(images), real=False)
        sync(device)
        sample_s, feature_s = sample_s + t1 - t0, feature_s + time.perf_counter() - t1
    return sample_s, feature_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--overrides", nargs="*", default=["experiment=ddpm_cifar10", "trainer=gpu"])
    parser.add_argument("--batch", type=int, default=128, help="training and sampling batch")
    parser.add_argument("--warmup", type=int, default=20, help="untimed training steps")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed DDIM-50 chains (DDPM-1000: one)")
    parser.add_argument("--fid-n", type=int, default=10_000, help="samples in the FID timing (0: skip)")
    parser.add_argument("--fid-batch", type=int, default=500)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args()
    retain_freed_memory()  # as train.py, sample.py and evaluate.py do at start
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as train.py sets on CUDA
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfg = compose_config(ROOT / "conf", "train", args.overrides)
    compile_options = (False,) if args.no_compile else (False, True)

    train = {
        c: train_steps_per_s(copy.deepcopy(cfg), device, args.batch, args.warmup, args.steps, c)
        for c in compile_options
    }
    module = build_module(cfg).to(device)
    params = sum(p.numel() for p in module.net.parameters())
    rows = []
    for name, steps, repeats in (("ddpm", None, 1), ("ddim", 50, args.repeats)):
        for c in compile_options:
            sampler = make_sampler(module.diffusion, name, steps=steps, compile=c)
            rates, outside = sample_images_per_s(module, sampler, args.batch, device, repeats)
            rows.append((f"{sampler.label}{', compiled' if c else ''}", rates, outside))
    fid = (
        fid_seconds(module, device, args.fid_n, args.fid_batch, os.environ.get("DDPM_FID_WEIGHTS"))
        if args.fid_n
        else None
    )

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}; overrides {' '.join(args.overrides)}; "
        f"{params / 1e6:.1f}M parameters, {cfg.data.image_size}x{cfg.data.image_size}x{cfg.data.channels}, "
        f"batch {args.batch}, precision {cfg.trainer.precision if device.type == 'cuda' else '32-true'}\n"
    )
    print("| what | figure |")
    print("|---|---|")
    for c, rate in train.items():
        print(
            f"| training, Lightning{', compile=true' if c else ''} | {rate:.2f} steps/s ({rate * args.batch:.0f} img/s) |"
        )
    for label, rates, outside in rows:
        share = "" if outside != outside else f"; {outside * 100:.1f}% of the loop outside the network"
        print(f"| sampling {label} | {fmt(rates, digits=2)} img/s{share} |")
    if fid:
        print(
            f"| FID of {args.fid_n} DDIM-50 samples | {sum(fid):.0f} s ({fid[0]:.0f} s sampling at batch "
            f"{args.fid_batch}, {fid[1]:.0f} s Inception) |"
        )


if __name__ == "__main__":
    main()
