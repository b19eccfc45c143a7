"""The GPU benchmark script runs end to end (here on the CPU, with a tiny model and small counts)."""

from __future__ import annotations

from tests.integration.conftest import run_script

TINY_MODEL = [
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_groups=4",
    "model.attn_resolutions=[14]",
    "schedule.num_timesteps=100",
]


def test_bench_gpu_prints_its_table_on_cpu(tmp_path, fid_weights, monkeypatch):
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    proc = run_script(
        "benchmarks/bench_gpu.py",
        "--device=cpu", "--batch=4", "--warmup=1", "--steps=2", "--repeats=1", "--fid-n=4", "--fid-batch=4",
        "--no-compile", "--overrides", *TINY_MODEL,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2]
        for line in proc.stdout.splitlines()
        if line.startswith("| ")
    }
    assert "steps/s" in rows["training, Lightning"]
    assert "img/s" in rows["sampling ddpm100"] and "outside the network" in rows["sampling ddpm100"]
    assert "img/s" in rows["sampling ddim50"]
    assert "s Inception" in rows["FID of 4 DDIM-50 samples"]
