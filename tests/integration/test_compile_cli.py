"""`compile=true`: the real CLI with torch.compile (minutes of compilation on a CPU: slow)."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_compiled_training_run(run_train, tmp_path):
    proc = run_train("compile=true", "logger=csv", "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["compile"] is True
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])  # checkpoints stay loadable without compile
