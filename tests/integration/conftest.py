"""Fixtures that run the real train.py (see tests/helpers/cli.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.cli import TINY, run_script


@pytest.fixture
def run_train(tmp_path):
    def _run(*overrides: str, tiny: bool = True, run_dir: str = "run") -> subprocess.CompletedProcess:
        args = [*(TINY if tiny else []), f"hydra.run.dir={tmp_path / run_dir}", *overrides]
        return run_script("train.py", *args, cwd=tmp_path)

    return _run
