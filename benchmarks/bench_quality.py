"""Quality per compute: python benchmarks/bench_quality.py (or make bench-quality [BUDGET_MIN=10]).

For each dataset (mnist5k, the embedded default; and full MNIST from the raw files in ../shared/data), train the
default config from scratch for a wall-clock budget with the real CLI (`python train.py data=<name>
trainer.max_time=<budget> trainer.max_steps=-1`), draw N samples from its last.ckpt with the default sampler
(`python evaluate.py metrics=[fid]`), and print FID and KID against the held-out split beside the data's own
floor: N *training* images scored the same way against the same reference. The held-out reference and the floor's
scores are cached under .cache/fid (keyed by the images' content and the weights), so only the first run pays for
them. The last line per dataset is machine-readable:

    quality data=<name> minutes=<m> steps=<s> fid=<x> floor_fid=<y> kid=<z> kid_std=<w> floor_kid=<v>

Needs the FID Inception weights ($DDPM_FID_WEIGHTS, or ../shared/assets/); never downloads anything.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch

from ddpm.config import compose_config
from ddpm.metrics import content_key, install_reference, make_fid, resolve_weights
from ddpm.metrics.kid import format_kid
from ddpm.metrics.reference import reference_batches, reference_size

ROOT = Path(__file__).resolve().parents[1]
RUN_ROOT = Path(os.environ.get("DDPM_ROOT", ROOT))  # where logs/ and .cache/ go, as for train.py
SHARED = Path(os.environ.get("DDPM_SHARED", ROOT.parent / "shared"))
SHARED_WEIGHTS = SHARED / "assets" / "inception-2015-12-05-fid-features-only-nofc.pth"
DATASETS = {  # name -> Hydra overrides of the data group
    "mnist5k": ["data=mnist5k"],
    "mnist": ["data=mnist", f"data.root={RUN_ROOT / 'data'}"],
}


def isa() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()


def fid_weights() -> str:
    """The FID Inception weights ($DDPM_FID_WEIGHTS, or the shared folder's); exits with a sentence when there are none."""
    weights = resolve_weights(
        os.environ.get("DDPM_FID_WEIGHTS") or (str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else None)
    )
    if weights is None:
        sys.exit(
            "no FID Inception weights: set DDPM_FID_WEIGHTS to the .pth file (or DDPM_SHARED to the shared/ folder)"
        )
    return weights


def unpack_mnist() -> None:
    """torchvision reads MNIST's four files unpacked under <root>/MNIST/raw/; the shared folder holds them gzipped
    (and read-only): unpack them once into this project's data/ (no download)."""
    src, dst = SHARED / "data" / "MNIST" / "raw", RUN_ROOT / "data" / "MNIST" / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for archive in src.glob("*.gz"):
        target = dst / archive.stem
        if not target.is_file():
            with gzip.open(archive, "rb") as f:
                target.with_suffix(".tmp").write_bytes(f.read())
            target.with_suffix(".tmp").replace(target)


def run(script: str, overrides: list[str], log: Path) -> str:
    """Run a root script as a user would; its output goes to `log` and is returned. A failure stops the bench."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.exit(f"{script} failed (exit {proc.returncode}); its output is in {log}")
    return proc.stdout + proc.stderr


def floor_scores(
    datamodule, n: int, reference_n: int, weights: str, cache_dir: Path
) -> dict[str, float | None]:
    """FID and KID of the first n training images against the held-out reference: the data's own floor (what a
    perfect sampler of the training distribution scores at this N). Cached by content, like the reference."""
    n_ref = reference_size(datamodule.val_set, reference_n)
    batches = reference_batches(datamodule.train_set, min(n, len(datamodule.train_set)))
    key = content_key(batches, weights)[:16]
    path = cache_dir / f"{datamodule.source}-floor-n{n}-ref{n_ref}-{key}.json"
    if path.is_file():  # no Inception needed
        return json.loads(path.read_text())
    metric = make_fid(weights)
    install_reference(metric, datamodule, str(cache_dir), reference_n, weights)
    for batch in batches:
        metric.update(batch, real=False)
    kid, kid_std = metric.kid()
    scores = {"fid": float(metric.compute()), "kid": kid, "kid_std": kid_std, "reference_n": n_ref}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-min", type=float, default=float(os.environ.get("BUDGET_MIN", 10)))
    parser.add_argument("--n", type=int, default=1000, help="samples (and training images for the floor)")
    parser.add_argument(
        "--reference-n", type=int, default=2000, help="held-out images of the reference (mnist5k holds 500)"
    )
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--out", type=Path, default=RUN_ROOT / "logs" / "bench_quality")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for train.py (default: none)")
    args = parser.parse_args()

    weights = fid_weights()
    if "mnist" in args.data and not (SHARED / "data" / "MNIST" / "raw").is_dir():
        sys.exit(
            f"full MNIST needs its raw files under {SHARED / 'data' / 'MNIST' / 'raw'}: set DDPM_SHARED, or --data mnist5k"
        )
    os.environ["DDPM_FID_WEIGHTS"] = weights
    if "mnist" in args.data:
        unpack_mnist()
    cache_dir = RUN_ROOT / ".cache" / "fid"
    stamp = datetime.now(timezone.utc)
    budget = time.strftime("%H:%M:%S", time.gmtime(round(args.budget_min * 60)))
    print(
        f"bench-quality {stamp:%Y-%m-%d %H:%M} UTC · {os.cpu_count()} CPU cores ({isa()}) · torch {torch.__version__} · "
        f"budget {args.budget_min:g} min · N = {args.n}"
    )

    for name in args.data:
        out = args.out / f"{stamp:%Y-%m-%d_%H-%M-%S}" / name
        out.mkdir(parents=True, exist_ok=True)
        # the default config, trained for the budget; its own end-of-run FID (n=256) is left to the evaluation below
        text = run(
            "train.py",
            [
                *DATASETS[name],
                f"trainer.max_time=00:{budget}",
                "trainer.max_steps=-1",
                "~callbacks.fid",
                f"hydra.run.dir={out / 'train'}",
                *args.overrides,
            ],
            out / "train.log",
        )
        steps = int(re.search(r"run finished: step (\d+) in ([\d.]+) min", text).group(1))
        ckpt = out / "train" / "checkpoints" / "last.ckpt"
        t0 = time.monotonic()
        run(
            "evaluate.py",
            [
                f"ckpt_path={ckpt}",
                "metrics=[fid]",
                f"fid.n={args.n}",
                f"fid.reference_n={args.reference_n}",
                "wandb.enabled=false",
                f"hydra.run.dir={out / 'evaluate'}",
            ],
            out / "evaluate.log",
        )
        scores = json.loads((out / "evaluate" / "metrics.json").read_text())["fid"]
        fid, kid, kid_std = scores["value"], scores["kid"], scores["kid_std"]
        seconds = time.monotonic() - t0

        cfg = compose_config(ROOT / "conf", "train", DATASETS[name])
        datamodule = hydra.utils.instantiate(cfg.data)
        datamodule.setup("fit")
        floor = floor_scores(datamodule, args.n, args.reference_n, weights, cache_dir)

        print(
            f"\n{name}: {steps} steps in {args.budget_min:g} min; {args.n} samples scored in {seconds:.0f} s; "
            f"reference: the first {floor['reference_n']} held-out images"
        )
        print("| | FID | KID × 10³ |\n|---|---|---|")
        print(
            f"| this project's default, {args.budget_min:g} min, {scores['sampler']} | {fid:.2f} | "
            f"{format_kid(kid, kid_std, 1e3, 2, '')} |"
        )
        print(
            f"| the floor: {args.n} training images | {floor['fid']:.2f} | "
            f"{format_kid(floor['kid'], floor['kid_std'], 1e3, 2, '')} |"
        )
        print(f"| ratio | {fid / floor['fid']:.2f}x | |")
        line = (
            f"quality data={name} minutes={args.budget_min:g} steps={steps} fid={fid:.3f} floor_fid={floor['fid']:.3f} "
            f"kid={kid:.5f} kid_std={kid_std if kid_std is None else f'{kid_std:.5f}'} floor_kid={floor['kid']:.5f}"
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
