"""Few-step generation by distillation: python benchmarks/bench_distill.py (or make bench-distill).

1. The teacher: `make bench-quality`'s MNIST-5k run, the default config trained from scratch for --budget-min minutes
   (`python train.py data=mnist5k trainer.max_time=... trainer.max_steps=-1 ~callbacks.fid`); or --teacher <ckpt>
   of such a run (its train.log gives its training time).
2. The student: `python distill.py ckpt_path=<teacher>` with the default method (progressive distillation with a
   round of distribution matching), whose wall-clock time is measured against the teacher's.
3. FID and KID of N samples against the held-out split, beside the floor (N training images scored the same way),
   all from the same seeds: the teacher with the default sampler (20 calls); the teacher's best sampler at 1, 2, 4
   and 10 calls (the lowest KID of a screen of --screen-n samples among DDIM on trailing timesteps,
   DPM-Solver++(2M), UniPC and SDE-DPM-Solver++(2M), each with its own spacing, then scored at N; at one call every
   deterministic sampler is the same x_0 prediction, taken from t = T - 1); DPM-Solver++ at 10 calls (the bar's
   reference) if it was not the best; the students of 4, 2 and 1 steps with their own samplers.

Prints a markdown table, writes a picture (one row of samples per row of the table, same seeds) and ends with a
machine-readable line:

    distill data=mnist5k teacher_minutes=<m> distill_minutes=<m> student4_fid=<x> student4_kid=<x> ...

Needs the FID Inception weights ($DDPM_FID_WEIGHTS, or ../shared/assets/); never downloads anything.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import hydra
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DATASETS, fid_weights, floor_scores, isa, run  # noqa: E402

from ddpm.build import build_sampler  # noqa: E402
from ddpm.checkpoint import load_checkpoint  # noqa: E402
from ddpm.config import compose_config  # noqa: E402
from ddpm.host_memory import retain_freed_memory  # noqa: E402
from ddpm.images import save_grid  # noqa: E402
from ddpm.metrics import install_reference, make_fid, score_samples  # noqa: E402
from ddpm.metrics.kid import format_kid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_ROOT = Path(os.environ.get("DDPM_ROOT", ROOT))

# the teacher's candidate samplers at k calls: (label, sampler node)
CANDIDATES = {
    "ddim (trailing)": lambda k: {"name": "ddim", "steps": k, "eta": 0.0, "spacing": "trailing"},
    "dpm_solver_pp": lambda k: {"name": "dpm_solver_pp", "steps": k, "order": min(2, k), "spacing": "logsnr"},
    "unipc": lambda k: {"name": "unipc", "steps": k, "order": min(2, k), "spacing": "logsnr"},
    "sde_dpm_solver_pp": lambda k: {
        "name": "sde_dpm_solver_pp",
        "steps": k,
        "order": min(2, k),
        "spacing": "uniform",
    },
}
TEACHER_CALLS = (1, 2, 4, 10)
STUDENT_STEPS = (4, 2, 1)
ROW_IMAGES = 10


def minutes_of(log: Path) -> tuple[int, float]:
    """(steps, minutes) from a run's `run finished: step N in M min` line."""
    found = re.search(r"run finished: step (\d+) in ([\d.]+) min", log.read_text())
    if found is None:
        sys.exit(f"{log} has no `run finished` line: the run did not finish")
    return int(found.group(1)), float(found.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-min", type=float, default=float(os.environ.get("BUDGET_MIN", 10)))
    parser.add_argument(
        "--teacher", type=Path, help="a bench-quality teacher's last.ckpt (default: train one)"
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reference-n", type=int, default=2000, help="held-out images (mnist5k holds 500)")
    parser.add_argument(
        "--screen-n", type=int, default=250, help="samples of the screen for the best sampler"
    )
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", type=Path, default=RUN_ROOT / "logs" / "bench_distill")
    parser.add_argument("--picture", type=Path, help="where the picture goes (default: the bench's folder)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for distill.py (default: none)")
    args = parser.parse_args()

    retain_freed_memory()  # the sampling and Inception batches reuse their memory instead of faulting it in again
    weights = fid_weights()
    os.environ["DDPM_FID_WEIGHTS"] = weights
    stamp = datetime.now(timezone.utc)
    out = args.out / f"{stamp:%Y-%m-%d_%H-%M-%S}"
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"bench-distill {stamp:%Y-%m-%d %H:%M} UTC · {os.cpu_count()} CPU cores ({isa()}) · torch {torch.__version__} · "
        f"N = {args.n}",
        flush=True,
    )

    # 1. the teacher
    if args.teacher is None:
        budget = time.strftime("%H:%M:%S", time.gmtime(round(args.budget_min * 60)))
        run(
            "train.py",
            [
                *DATASETS["mnist5k"],
                f"trainer.max_time=00:{budget}",
                "trainer.max_steps=-1",
                "~callbacks.fid",
                f"hydra.run.dir={out / 'teacher'}",
            ],
            out / "teacher.log",
        )
        args.teacher = out / "teacher" / "checkpoints" / "last.ckpt"
    teacher_steps, teacher_min = minutes_of(args.teacher.parent.parent / "train.log")

    # 2. the student
    run(
        "distill.py",
        [f"ckpt_path={args.teacher}", "~callbacks.fid", f"hydra.run.dir={out / 'distill'}", *args.overrides],
        out / "distill.log",
    )
    distill_steps, distill_min = minutes_of(out / "distill" / "distill.log")
    print(
        f"teacher: {teacher_steps} steps in {teacher_min:.1f} min; distillation: {distill_steps} steps in "
        f"{distill_min:.1f} min ({distill_min / teacher_min:.2f}x the teacher's time)",
        flush=True,
    )

    # 3. the scores
    teacher, run_cfg = load_checkpoint(args.teacher)
    datamodule = hydra.utils.instantiate(run_cfg.data)
    datamodule.setup("fit")
    metric = make_fid(weights)
    cache_dir = RUN_ROOT / ".cache" / "fid"
    n_ref = install_reference(metric, datamodule, str(cache_dir), args.reference_n, weights)
    reference = f"the first {n_ref} held-out images"
    rows = []

    def score(what: str, module, spec: dict, calls: int, n: int = args.n, picture: bool = True) -> dict:
        """FID and KID of n samples of `module` with the sampler `spec`, from the seeds every row shares."""
        sampler = build_sampler(module.diffusion, {"compile": False, **spec})
        start = time.monotonic()
        draw = lambda count, generator: module.sample(sampler, count, generator=generator)  # noqa: E731
        scores = score_samples(metric, draw, n, args.batch, args.seed)
        result = {"what": what, "calls": calls, "sampler": sampler.label, "n": n, **scores}
        result["seconds"] = time.monotonic() - start
        print(
            f"  {what}: {sampler.label}, N = {n}: FID {result['fid']:.2f}, KID {result['kid'] * 1e3:.2f}e-3",
            flush=True,
        )
        if picture:
            generator = torch.Generator().manual_seed(0)
            result["images"] = module.sample(sampler, ROW_IMAGES, generator=generator)
        return result

    default = compose_config(ROOT / "conf", "sample").sampler
    calls = len(build_sampler(teacher.diffusion, default).timesteps)
    rows.append(score("teacher, default sampler", teacher, dict(default), calls))
    # the best sampler at k calls: the lowest KID of a screen of --screen-n samples, then scored at N
    for k in TEACHER_CALLS:
        names = ["ddim (trailing)"] if k == 1 else list(CANDIDATES)
        screen = {}
        if len(names) > 1:
            for name in names:
                screen[name] = score(
                    f"teacher screen, {name}", teacher, CANDIDATES[name](k), k, args.screen_n, False
                )
        best = min(names, key=lambda name: screen[name]["kid"] if screen else 0)
        row = score("teacher, its best sampler" if screen else "teacher", teacher, CANDIDATES[best](k), k)
        row["screen"] = {r["sampler"]: (r["fid"], r["kid"]) for r in screen.values()}
        rows.append(row)
    if rows[-1]["sampler"] != "dpm_solver_pp10":  # the bar's reference: DPM-Solver++ at 10 calls
        rows.append(score("teacher, DPM-Solver++", teacher, CANDIDATES["dpm_solver_pp"](10), 10))
    for steps in STUDENT_STEPS:
        student, student_cfg = load_checkpoint(out / "distill" / "checkpoints" / f"student_{steps}steps.ckpt")
        rows.append(score("student", student, dict(student_cfg.sampler), steps))

    floor = floor_scores(datamodule, args.n, args.reference_n, weights, cache_dir)
    picture = args.picture or out / "distill_samples.png"
    save_grid(torch.cat([r["images"] for r in rows]), picture, nrow=ROW_IMAGES)

    print(
        f"\nmnist5k: teacher {teacher_steps} steps in {teacher_min:.1f} min; student distilled in {distill_min:.1f} min; "
        f"N = {args.n} against {reference}"
    )
    print("| | network calls | sampler | FID | KID × 10³ |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} | {r['calls']} | {r['sampler']} | {r['fid']:.2f} | "
            f"{format_kid(r['kid'], r['kid_std'], 1e3, 2, '')} |"
        )
    print(
        f"| the floor: {args.n} training images | | | {floor['fid']:.2f} | {format_kid(floor['kid'], floor['kid_std'], 1e3, 2, '')} |"
    )
    for r in rows:
        if r.get("screen"):
            tried = ", ".join(
                f"{name} {fid:.2f} / {kid * 1e3:.2f}" for name, (fid, kid) in r["screen"].items()
            )
            print(f"- the screen at {r['calls']} calls (N = {args.screen_n}), FID / KID × 10³: {tried}")
    print(f"picture: {picture} (rows in the table's order, {ROW_IMAGES} samples each, the same seed)")

    by = {(r["what"].split(",")[0], r["calls"]): r for r in rows if "DPM" not in r["what"]}
    dpm10 = next(r for r in rows if r["sampler"] == "dpm_solver_pp10")
    dpm10 = (dpm10["fid"], dpm10["kid"])
    fields = {
        "teacher_minutes": f"{teacher_min:.2f}",
        "distill_minutes": f"{distill_min:.2f}",
        "teacher_default_fid": f"{rows[0]['fid']:.3f}",
        "teacher_default_kid": f"{rows[0]['kid']:.5f}",
        "teacher_dpm10_fid": f"{dpm10[0]:.3f}",
        "teacher_dpm10_kid": f"{dpm10[1]:.5f}",
        **{f"teacher_best{k}_kid": f"{by[('teacher', k)]['kid']:.5f}" for k in TEACHER_CALLS},
        **{f"student{s}_fid": f"{by[('student', s)]['fid']:.3f}" for s in STUDENT_STEPS},
        **{f"student{s}_kid": f"{by[('student', s)]['kid']:.5f}" for s in STUDENT_STEPS},
        "floor_fid": f"{floor['fid']:.3f}",
        "floor_kid": f"{floor['kid']:.5f}",
    }
    print("distill data=mnist5k " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


if __name__ == "__main__":
    main()
