"""Training and inference throughput on this machine: python benchmarks/bench_train.py (or make bench).

One shared workload (1x32x32 images, batch 64, T=1000 linear, eps-prediction MSE, AdamW, gradient clipping at 1, EMA)
run on: our UNet matched to the peer's size, parameters and FLOPs with DDPM's one attention head (through our
LightningModule + Lightning Trainer, and the same network in a plain PyTorch loop), our UNet at the peer's exact
architecture (8 heads of dimension 8, 32 GroupNorm groups; plain loop), diffusers' UNet2DModel (block_out_channels 32,64,64, 2 layers per block,
attention at the middle level; only when the `bench` extra is installed), and the default CPU training config
(model=unet_small on 28x28 MNIST-sized images).

This machine's speed drifts by 10-20% over minutes, so rows are interleaved: each of --rounds rounds runs every row
once, in its own fresh subprocess (so peak RSS is its own), timing --steps steps after --warmup steps. A figure is
the median over rounds (min–max); a ratio between two rows is the median of the ratios within each round, i.e. of
measurements taken a minute apart. Lightning's overhead is measured two ways: as that ratio between the `ours` and
`ours_plain` rows (noisy: a 3% difference between 2-second steps a minute apart), and directly, as the per-step time
the Trainer adds to a plain loop around a network that costs nothing, over 200 steps.

The table's header names the instruction set the rows ran with (torch.backends.cpu.get_cpu_capability()): this
project's machines vary between AVX2 and AVX-512, and the convolutions, hence our figures, follow it. --isa avx2
runs every row with oneDNN, ATen and MKL held to AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY,
MKL_ENABLE_INSTRUCTIONS), to measure on an AVX-512 machine what an AVX2 one does.

Our rows run as train.py runs them: with glibc told to keep freed memory (ddpm.host_memory), which spares each step
the page faults of mapping its activations in again. The diffusers row runs in a plain process, as issue 5 measured
the peers; a second diffusers row runs with the same allocator setting, for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddpm.host_memory import retain_freed_memory

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
LIGHTNING_COST_STEPS = 200  # steps of each run that measures Lightning's own cost

# environment that holds oneDNN (convolutions), ATen (element-wise kernels, attention) and MKL (matmuls) to an ISA;
# read when torch loads, so it applies to the subprocess of each row
ISA_ENV = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}

# our UNet matched to the peer's size: the same layers, parameters (1,623,169) and FLOPs as diffusers' UNet2DModel
# below, with DDPM's attention (one head) and GroupNorm (4 channels per group at this width)
MATCHED = dict(
    image_size=32,
    in_channels=1,
    base_channels=32,
    channel_mult=(1, 2, 2),
    num_res_blocks=2,
    attn_resolutions=(16,),
    num_heads=1,
    num_groups=8,
    dropout=0.0,
    channels_last=True,
)
# the peer's exact architecture: diffusers' defaults are 8 attention heads of dimension 8 and 32 GroupNorm groups
EXACT = {**MATCHED, "num_heads": 8, "num_groups": 32}

# rows run with the allocator setting train.py applies (ddpm.host_memory); the ceiling is the convolution at its
# best, so it is measured without page faults too
RETAINED = {"ours", "ours_plain", "ours_exact", "default", "diffusers_retained", "ceiling"}


def make_net(name: str) -> tuple[torch.nn.Module, int, int]:
    """(network called as net(x, t) -> tensor, image size, channels)."""
    if name in ("ours", "ours_plain", "ours_exact"):
        from ddpm.models import UNet

        return UNet(**(EXACT if name == "ours_exact" else MATCHED)), 32, 1
    if name == "default":
        from ddpm.build import build_network
        from ddpm.config import compose_config

        cfg = compose_config(ROOT / "conf", "train")
        return build_network(cfg), cfg.data.image_size, cfg.data.channels
    if name in ("diffusers", "diffusers_retained"):
        from diffusers import UNet2DModel

        peer = UNet2DModel(
            sample_size=32,
            in_channels=1,
            out_channels=1,
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        )

        class Peer(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.unet = peer

            def forward(self, x, t):
                return self.unet(x, t).sample

        return Peer(), 32, 1
    raise ValueError(name)


def forward_flops(net, size: int, channels: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.randn(BATCH, channels, size, size), torch.randint(0, 1000, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        net(x, t)
    return counter.get_total_flops()


def per_step(stamps: list[float], warmup: int, steps: int) -> float:
    """Seconds per step over `steps` steps after `warmup` steps, from the time stamps at the start of each step."""
    return (stamps[warmup + steps] - stamps[warmup]) / steps


def time_lightning(net, size, channels, args) -> float:
    from ddpm.diffusion import GaussianDiffusion, make_beta_schedule
    from ddpm.training import DiffusionModule

    module = DiffusionModule(
        net, GaussianDiffusion(make_beta_schedule("linear", 1000)), lr=2e-4, warmup_steps=100
    )
    return fit_seconds_per_step(module, (channels, size, size), BATCH, args.warmup, args.steps)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a time stamp taken next measures it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_seconds_per_step(
    module, image_shape, batch: int, warmup: int, steps: int, device: str = "cpu", precision="32-true"
) -> float:
    """Seconds per optimizer step of L.Trainer.fit on random images, between the starts of step `warmup` and
    `warmup + steps` (the device is synchronised before each time stamp)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    device = torch.device(device)
    total = warmup + steps + 1
    data = TensorDataset(torch.rand(batch * total, *image_shape) * 2 - 1)
    stamps: list[float] = []

    class Stamp(L.Callback):
        def on_train_batch_start(self, *a):
            sync(device)
            stamps.append(time.perf_counter())

    L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[Stamp()],
    ).fit(
        module,
        DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, pin_memory=device.type == "cuda"),
    )
    return per_step(stamps, warmup, steps)


class PointwiseNet(torch.nn.Module):
    """A network that costs almost nothing (one 1x1 convolution): what is left of a step is the loop around it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x, t):
        return self.conv(x)


def lightning_cost(size: int, channels: int, warmup: int = 20, steps: int = LIGHTNING_COST_STEPS) -> float:
    """Seconds per step that the Trainer adds to the plain loop, whatever the network: the step time of Lightning minus
    that of the faster of two plain-loop runs (so the estimate errs high), all around a network that costs nothing,
    over many steps (a few ms each, so the machine's drift, which swamps a 3% difference between two 2-second steps,
    does not enter)."""
    from types import SimpleNamespace

    args = SimpleNamespace(warmup=warmup, steps=steps)
    plain = [time_plain(PointwiseNet(channels), size, channels, args) for _ in range(2)]
    trainer = time_lightning(PointwiseNet(channels), size, channels, args)
    return trainer - min(plain)


def time_plain(net, size, channels, args) -> float:
    """The same step in plain PyTorch: noise, loss, backward, clip, AdamW, LR warm-up, EMA."""
    from ddpm.diffusion import GaussianDiffusion, make_beta_schedule
    from ddpm.training import EMA

    diffusion = GaussianDiffusion(make_beta_schedule("linear", 1000))
    ema = EMA(net, decay=0.9999)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    total = args.warmup + args.steps + 1
    data = torch.rand(BATCH * total, channels, size, size) * 2 - 1
    order = torch.randperm(len(data))
    net.train()
    stamps = []
    for step in range(total):
        stamps.append(time.perf_counter())
        x0 = data[order[step * BATCH : (step + 1) * BATCH]]
        t = torch.randint(0, 1000, (BATCH,))
        loss = diffusion.training_losses(net, x0, t, torch.randn_like(x0)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(net, step)
    return per_step(stamps, args.warmup, args.steps)


def time_inference(net, size, channels, args) -> float:
    net.eval()
    x, t = torch.randn(BATCH, channels, size, size), torch.randint(0, 1000, (BATCH,))
    with torch.inference_mode():
        for _ in range(args.warmup):
            net(x, t)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            net(x, t)
    return (time.perf_counter() - t0) / args.steps


def conv_ceiling(args) -> float:
    """GFLOP/s of one 3x3 conv, 64 -> 64 channels, 32x32, batch 64, channels_last, forward + backward."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 64, 32, 32).to(memory_format=torch.channels_last).requires_grad_()
    flops = 3 * 2 * BATCH * 64 * 64 * 9 * 32 * 32  # forward, grad input, grad weight
    for _ in range(args.warmup):
        conv(x).sum().backward()
    t0 = time.perf_counter()
    for _ in range(4 * args.steps):
        conv(x).sum().backward()
    return flops * 4 * args.steps / (time.perf_counter() - t0) / 1e9


def measure(name: str, args) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    isa = torch.backends.cpu.get_cpu_capability()  # what ATen dispatches to: AVX2, AVX512, ...
    if name in RETAINED:  # as train.py, sample.py and evaluate.py do at start
        retain_freed_memory()
    if name == "ceiling":
        return {"name": name, "gflops": conv_ceiling(args), "rss_mb": peak_rss_mb(), "isa": isa}
    net, size, channels = make_net(name)
    row = {
        "name": name,
        "params": sum(p.numel() for p in net.parameters()),
        "flops": forward_flops(net, size, channels),
        "size": size,
        "channels": channels,
        "isa": isa,
    }
    if name in ("ours_plain", "ours_exact", "diffusers", "diffusers_retained"):
        row["train_s"] = time_plain(net, size, channels, args)
    else:
        row["train_s"] = time_lightning(net, size, channels, args)
    if name == "ours":
        row["lightning_cost_s"] = lightning_cost(size, channels)
    row["infer_s"] = time_inference(net, size, channels, args)
    row["rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt(values: list[float], digits: int = 1) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every row once")
    parser.add_argument(
        "--rows",
        nargs="*",
        default=["ours", "ours_plain", "ours_exact", "diffusers", "diffusers_retained", "default", "ceiling"],
    )
    parser.add_argument(
        "--isa",
        choices=sorted(ISA_ENV),
        default="native",
        help="instruction set the rows may use (see above)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return

    names = list(args.rows)
    peers = [n for n in names if n.startswith("diffusers")]
    if peers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed (make install): its rows are left out", file=sys.stderr)
            names = [n for n in names if n not in peers]
    rounds: list[dict] = []
    for r in range(args.rounds):
        results = {}
        for name in names:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, f"--warmup={args.warmup}", f"--steps={args.steps}"],
                capture_output=True, text=True, check=False, env={**os.environ, **ISA_ENV[args.isa]},
            )  # fmt: skip
            if proc.returncode:
                sys.exit(f"row {name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        rounds.append(results)
        print(f"round {r + 1}/{args.rounds} measured", file=sys.stderr)
    report(rounds, args)


LABELS = {
    "ours": "ours, matched config, LightningModule + Trainer",
    "ours_plain": "ours, matched config, plain PyTorch loop",
    "ours_exact": "ours, the peer's exact architecture (8 heads of 8, 32 groups), plain PyTorch loop",
    "diffusers": "diffusers UNet2DModel, plain PyTorch loop",
    "diffusers_retained": "diffusers UNet2DModel, plain PyTorch loop, freed memory retained as ours",
    "default": "ours, default CPU config (unet_small, 28x28), Lightning",
}


def report(rounds: list[dict], args) -> None:
    def series(name: str, key: str) -> list[float]:
        return [r[name][key] for r in rounds if name in r]

    def ratio(a: str, b: str, key: str = "train_s") -> list[float]:
        """b's time over a's time in each round: how many times faster a is than b."""
        return [r[b][key] / r[a][key] for r in rounds if a in r and b in r]

    first = rounds[0]
    isa = sorted({row["isa"] for r in rounds for row in r.values()})
    print(
        f"\nbatch {BATCH}, {torch.get_num_threads()} threads, torch {torch.__version__}, CPU kernels {'/'.join(isa)}"
        f"{' (held to AVX2: --isa avx2)' if args.isa == 'avx2' else ''}; median (min–max) over "
        f"{len(rounds)} interleaved rounds of {args.steps} timed steps after {args.warmup} warm-up steps\n"
    )
    print(
        "| model | params | fwd GFLOP @64 | train img/s | train GFLOP/s | inference NFE/s @64 | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label in LABELS.items():
        if name not in first:
            continue
        r = first[name]
        gf = r["flops"] / 1e9
        train = series(name, "train_s")
        print(
            f"| {label} | {r['params'] / 1e6:.2f}M | {gf:.1f} | {fmt([BATCH / s for s in train])} "
            f"| {fmt([3 * gf / s for s in train])} | {fmt([BATCH / s for s in series(name, 'infer_s')], 0)} "
            f"| {max(series(name, 'rss_mb')):.0f} |"
        )
    print()
    if "ours" in first:
        cost = series("ours", "lightning_cost_s")
        share = [100 * c / (r["ours"]["train_s"] - c) for c, r in zip(cost, rounds, strict=True)]
        print(
            "Lightning's own cost per step (Trainer minus plain loop around a network that costs nothing, "
            f"{LIGHTNING_COST_STEPS} steps):"
            f" {fmt([1e3 * c for c in cost], 2)} ms, i.e. {fmt(share, 2)} % of the matched config's step"
        )
    if "ours" in first and "ours_plain" in first:
        overhead = [1 / x - 1 for x in ratio("ours", "ours_plain")]
        print(
            "Lightning overhead, across rows (Trainer step time / plain loop row's step time - 1): "
            f"{fmt([100 * o for o in overhead])} %"
        )
    # like for like: the peer with the allocator setting ours has; without that row, say what is compared instead
    like = "diffusers_retained" if "diffusers_retained" in first else "diffusers"
    basis = (
        "like for like (same allocator setting)"
        if like == "diffusers_retained"
        else "diffusers without our allocator setting"
    )
    if "ours" in first and like in first:
        print(
            f"HEADLINE, training throughput, ours through Lightning / diffusers in a plain loop, {basis}: "
            f"{fmt(ratio('ours', like), 2)}x"
        )
    if "ours" in first and "diffusers" in first and like != "diffusers":
        print(
            "Training throughput, ours through Lightning (allocator set) / diffusers in a plain process "
            f"(allocator not set): {fmt(ratio('ours', 'diffusers'), 2)}x"
        )
    if "ours_plain" in first and like in first:
        print(
            f"Both in a plain loop, {basis}: training ours / diffusers {fmt(ratio('ours_plain', like), 2)}x, "
            f"inference network evaluations/s {fmt(ratio('ours_plain', like, 'infer_s'), 2)}x"
        )
    if "ours_exact" in first and like in first:
        print(
            f"Training throughput at the peer's exact architecture, ours / diffusers, {basis}: "
            f"{fmt(ratio('ours_exact', like), 2)}x"
        )
    if "diffusers" in first and "diffusers_retained" in first:
        print(
            "diffusers with freed memory retained / in a plain process: "
            f"{fmt(ratio('diffusers_retained', 'diffusers'), 2)}x"
        )
    if "ceiling" in first:
        ceiling = series("ceiling", "gflops")
        print(f"3x3 conv 64ch 32x32 batch 64, channels_last, fwd+bwd: {fmt(ceiling)} GFLOP/s")
        if "default" in first:
            share = [
                3 * r["default"]["flops"] / 1e9 / r["default"]["train_s"] / r["ceiling"]["gflops"]
                for r in rounds
            ]
            print(
                f"Default CPU config: {fmt([100 * x for x in share], 0)} % of that conv ceiling (same round)"
            )
    print(
        "\nGFLOP counts are torch's FlopCounterMode on the forward pass; training GFLOP/s = 3 x forward GFLOP x steps/s. "
        "Neither count includes the attention products inside the fused CPU scaled_dot_product_attention kernel "
        "(~5.4 GFLOP at batch 64, whatever the number of heads), so the columns compare like with like. They do not count the "
        "softmax either: with 8 heads the attention takes 8x as many exponentials as with one."
    )


if __name__ == "__main__":
    main()
