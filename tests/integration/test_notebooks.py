"""The notebooks run top to bottom (nbclient, a real kernel), so they never rot. Slow: `make test-all`."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers.paths import ROOT

NOTEBOOKS = ROOT / "notebooks"


def _execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def test_notebooks_are_saved_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert all(
            not c.get("outputs") and c.get("execution_count") is None
            for c in nb.cells
            if c.cell_type == "code"
        )


@pytest.mark.slow
def test_forward_process_notebook_runs():
    nb = _execute("01_forward_process.ipynb", NOTEBOOKS)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # variance curves, schedules, the dissolving digit


@pytest.mark.slow
def test_reverse_process_notebook_runs_on_a_trained_checkpoint(run_train, tmp_path, monkeypatch):
    assert run_train("logger=none").returncode == 0
    monkeypatch.setenv("DDPM_CKPT", str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    nb = _execute("02_reverse_process.ipynb", tmp_path)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the trajectory and DDPM vs DDIM
