"""The benchmark scripts run end to end (the GPU one here on the CPU, with a tiny model and small counts)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers.cli import run_script

TINY_MODEL = [
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_groups=4",
    "model.attn_resolutions=[14]",
    "schedule.num_timesteps=100",
]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """A printed markdown table: each row's first cell -> the cells after it."""
    return {
        line.split("|")[1].strip(): line.split("|")[2:]
        for line in stdout.splitlines()
        if line.startswith("| ")
    }


def test_bench_gpu_prints_its_table_on_cpu(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_script(
        "benchmarks/bench_gpu.py",
        "--device=cpu", "--batch=4", "--warmup=1", "--steps=2", "--repeats=1", "--fid-n=4", "--fid-batch=4",
        "--no-compile", "--overrides", *TINY_MODEL,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {label: cells[0] for label, cells in table_rows(proc.stdout).items()}
    assert "steps/s" in rows["training, Lightning"]
    assert "img/s" in rows["sampling ddpm100"] and "outside the network" in rows["sampling ddpm100"]
    assert "img/s" in rows["sampling ddim50"]
    assert "s Inception" in rows["FID of 4 DDIM-50 samples"]


def bench_train(tmp_path, *args: str) -> str:
    """stdout of one quick round of benchmarks/bench_train.py (one warm-up and one timed step per row)."""
    proc = run_script(
        "benchmarks/bench_train.py", *args, "--rounds=1", "--warmup=1", "--steps=1", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_train_measures_lightning_against_the_plain_loop(tmp_path):
    out = bench_train(tmp_path, "--rows", "ours", "ours_plain")
    rows = table_rows(out)
    for label in (
        "ours, matched config, LightningModule + Trainer",
        "ours, matched config, plain PyTorch loop",
    ):
        params, gflop, img_s = (c.strip() for c in rows[label][:3])
        assert params == "1.62M" and gflop == "48.0"  # the peer's size, as the README says
        assert float(img_s.split()[0]) > 0
    cost = re.search(r"Lightning's own cost per step .*?: (-?[\d.]+) .* ms, i.e. (-?[\d.]+) ", out)
    assert cost, out
    ms, share = float(cost.group(1)), float(cost.group(2))
    assert abs(ms) < 1000 and abs(share) < 100  # a per-step difference in ms, and its share of a real step
    assert "Lightning overhead, across rows" in out
    # the header names the instruction set the rows ran with, since this project's machines vary
    assert f"CPU kernels {torch.backends.cpu.get_cpu_capability()};" in out


def test_bench_train_holds_rows_to_avx2(tmp_path):
    """--isa avx2 runs each row's subprocess with oneDNN, ATen and MKL held to AVX2, and the header says so."""
    out = bench_train(tmp_path, "--rows", "ceiling", "--isa=avx2")
    assert "CPU kernels AVX2 (held to AVX2: --isa avx2);" in out
    assert float(out.split("channels_last, fwd+bwd: ")[1].split()[0]) > 0


@pytest.mark.slow  # a minute of benchmark rows
def test_bench_train_compares_with_diffusers_plain_and_like_for_like(tmp_path):
    """The peer at the matched size, in a plain process and with our allocator setting."""
    out = bench_train(tmp_path, "--rows", "ours", "ours_plain", "diffusers", "diffusers_retained")
    rows = table_rows(out)
    for label in (
        "diffusers UNet2DModel, plain PyTorch loop",
        "diffusers UNet2DModel, plain PyTorch loop, freed memory retained as ours",
    ):
        params, gflop = (c.strip() for c in rows[label][:2])
        assert params == "1.62M" and gflop == "48.0"  # the size our matched config is matched to
    headline = re.search(r"HEADLINE.*, like for like \(same allocator setting\): ([\d.]+) ", out)
    assert headline and float(headline.group(1)) > 0, out
    like = re.search(
        r"Both in a plain loop, like for like .*: training ours / diffusers ([\d.]+) .*evaluations/s ([\d.]+) ",
        out,
    )
    assert like and float(like.group(1)) > 0 and float(like.group(2)) > 0, out
    assert re.search(r"diffusers with freed memory retained / in a plain process: [\d.]+ ", out), out


@pytest.mark.slow
def test_bench_quality_trains_scores_and_prints_its_machine_readable_line(tmp_path, fid_weights, monkeypatch):
    """The real train.py for a 6-second budget, the real evaluate.py, the floor: the last line says what it reached,
    and a network trained for seconds (noise) scores far above real digits."""
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_script(
        "benchmarks/bench_quality.py", "--budget-min=0.1", "--n=8", "--reference-n=16", "--data", "mnist5k",
        "--out", str(tmp_path / "bench"), "--", *TINY_MODEL, "data.batch_size=8", "sampler.steps=3",
        "trainer.val_check_interval=10", "logger=none", "~callbacks.progress_bar",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert last.startswith("quality data=mnist5k minutes=0.1 steps=")
    assert set(fields) == {"data", "minutes", "steps", "fid", "floor_fid", "kid", "kid_std", "floor_kid"}
    assert int(fields["steps"]) > 0
    assert float(fields["fid"]) > float(fields["floor_fid"]) > 0
    assert float(fields["kid"]) > float(fields["floor_kid"])
    assert list((tmp_path / ".cache" / "fid").glob("mnist5k-floor-n8-ref16-*.json"))  # the floor is cached
    assert "| the floor: 8 training images |" in proc.stdout


@pytest.mark.slow  # three fills of 20 images with Inception features
def test_bench_inpaint_scores_three_fills(tmp_path, fid_weights, monkeypatch):
    from tests.helpers.paths import LEGACY

    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_script(
        "benchmarks/bench_inpaint.py", f"--ckpt={LEGACY / 'tiny.ckpt'}", "--n=20", "--batch=10", "--jump-length=5",
        "--jump-n-sample=2", f"--cache-dir={tmp_path / 'cache'}", "--sampler", "sampler=ddim", "sampler.steps=10",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    assert set(rows) >= {"mean image", "replacement", "RePaint"}
    for name in ("mean image", "replacement", "RePaint"):
        fid, mse = float(rows[name][0]), float(rows[name][2])
        assert fid > 0 and mse > 0
    assert "Inpainting the centre of 20 held-out mnist5k images" in proc.stdout


@pytest.mark.slow  # a tiny teacher, three rounds of two steps, 17 scores of 8 samples
def test_bench_distill_prints_its_table_and_last_line(tmp_path, fid_weights, monkeypatch):
    from tests.helpers.cli import train_tiny

    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    teacher = train_tiny(tmp_path)
    proc = run_script(
        "benchmarks/bench_distill.py", f"--teacher={teacher}", "--n=8", "--screen-n=8", "--reference-n=16", "--batch=8",
        f"--out={tmp_path / 'bench'}", "method.teacher_steps=8", "method.student_steps=1", "method.steps_per_round=2",
        "method.first_round_steps=2", "method.matching_steps=2",
        "method.batch_size=8", "trainer.limit_val_batches=1", "callbacks.distillation_rounds.n=4",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    assert rows["teacher, default sampler"][0].strip() == "20"
    assert [cells[0].strip() for label, cells in rows.items() if label == "student"] == [
        "1"
    ]  # the last of 4, 2, 1
    students = [line for line in proc.stdout.splitlines() if line.startswith("| student |")]
    assert [line.split("|")[3].strip() for line in students] == ["ddim4", "ddim2", "ddim1"]
    fields = dict(f.split("=") for f in proc.stdout.strip().splitlines()[-1].split()[2:])
    assert {"student4_fid", "student1_kid", "teacher_dpm10_fid", "teacher_best4_kid", "floor_fid"} <= set(
        fields
    )
    assert float(fields["distill_minutes"]) >= 0 and float(fields["teacher_minutes"]) >= 0  # 0.0: seconds
    assert list((tmp_path / "bench").glob("*/distill_samples.png"))
