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


def _printed(nb: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )


def _number(pattern: str, text: str) -> list[float]:
    import re

    found = re.findall(pattern, text)
    assert found, f"{pattern!r} not printed:\n{text}"
    return [float(v) for v in (found[0] if isinstance(found[0], tuple) else (found[0],))]


@pytest.mark.slow
def test_the_term_by_term_notebook_prints_each_claim(tmp_path, monkeypatch, fid_weights):
    """Notebook 03 trains its own learned-variance model (a few minutes) and prints the number behind each section."""
    monkeypatch.setenv("DDPM_FID_WEIGHTS", fid_weights)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("DDPM_CKPT", raising=False)
    nb = _execute("03_reverse_process_term_by_term.ipynb", tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = _printed(nb)
    number = r"([0-9.]+(?:e[-+]?[0-9]+)?)"
    # 1. the mean-only chain loses the variation of the data: less pixel variance, a worse KID
    var_a, kid_a = _number(rf"ancestral\s*: pixel variance across samples {number} \| KID {number}", text)
    var_m, kid_m = _number(rf"mean only\s*: pixel variance across samples {number} \| KID {number}", text)
    assert var_m < var_a and kid_m > kid_a
    (dup_a,), (dup_m,) = (
        _number(r"ancestral\s*:.*near-duplicates (\d+)/", text),
        _number(r"mean only\s*:.*near-duplicates (\d+)/", text),
    )
    assert dup_m > dup_a
    # 2. the terms add up to the reported bound, and L_(t-1) is w_t ||eps - eps_theta||^2 + C_t
    summed, reported = _number(
        rf"= {number} bits/dim; the bound evaluate.py reports for these images: {number}", text
    )
    assert summed == pytest.approx(reported, rel=1e-3) and 0 < summed < 20
    (identity,) = _number(rf"largest relative difference {number}", text)
    assert identity < 1e-3
    (fall,) = _number(rf"w_t falls {number}x from t = 1 to t = T", text)
    assert fall > 10
    (share,) = _number(r"the first 10 of \d+ steps hold (\d+)% of the bound", text)
    assert share > 50
    # 3. the noise is hard to predict at t = 1 and easy at t = T
    first, _, last = _number(
        rf"noise-prediction error per dim: {number} at t = 1, {number} at t = \d+, {number} at t = T", text
    )
    assert first > 10 * last
    # 4. the learned variance lies between betatilde_t and beta_t where they differ
    for f in [float(v) for v in __import__("re").findall(r"\(f = (-?[0-9.]+): 0 is betatilde_t", text)]:
        assert -0.05 <= f <= 1.05
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 5
