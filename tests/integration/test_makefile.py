"""The Makefile's one-command workflows: a fresh clone's first `make test` or `make train` builds .venv itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def dry_run(cwd, *args: str) -> str:
    """`make -n <args>`: the commands make would run, without running them."""
    proc = subprocess.run(["make", "-n", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return proc.stdout


@pytest.fixture
def clone(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("target,command", [("test", "-m pytest"), ("train", "train.py")])
def test_first_command_on_a_fresh_clone_builds_the_venv(clone, target, command):
    plan = dry_run(clone, target)
    assert "-m venv .venv" in plan and 'pip install -e ".[dev]"' in plan
    assert plan.index("-m venv") < plan.index(command)


def test_a_built_venv_is_not_rebuilt_until_pyproject_changes(clone):
    (clone / ".venv").mkdir()
    stamp = clone / ".venv" / ".installed"
    stamp.touch()
    later = time.time() + 10
    os.utime(stamp, (later, later))
    plan = dry_run(clone, "test")
    assert "pip install" not in plan and ".venv/bin/python -m pytest" in plan
    os.utime(clone / "pyproject.toml", (later + 10, later + 10))
    assert 'pip install -e ".[dev]"' in dry_run(clone, "test")


def test_make_train_passes_overrides(clone):
    plan = dry_run(clone, "train", "ARGS=schedule=cosine trainer.max_steps=200")
    assert ".venv/bin/python train.py schedule=cosine trainer.max_steps=200" in plan
