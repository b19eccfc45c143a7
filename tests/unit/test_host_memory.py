"""retain_freed_memory: a process that allocates and frees the same large blocks stops page-faulting them in."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's; other C libraries are left alone",
)

# a training step in miniature: 16 blocks of 8 MiB (a few activations) allocated and written, then freed, 5 rounds of
# warm-up and 5 measured; prints the minor page faults of the measured rounds. The blocks come from glibc's malloc
# directly (torch's CPU allocator calls it too), so that no small allocation lands between them: by default the 128
# MiB they free merge at the top of the heap, above glibc's trim threshold (at most 64 MiB), and go back to the
# kernel every round
CHURN = """
import ctypes, resource
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def churn():
    blocks = [libc.malloc(8 * 2**20) for _ in range({blocks})]
    for b in blocks:
        ctypes.memset(b, 1, 8 * 2**20)
    for b in blocks:
        libc.free(b)
for _ in range(5):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
BLOCKS = 16
PAGES_TOUCHED = 5 * BLOCKS * 8 * 2**20 // 4096  # by the 5 measured rounds

TRAINING_RUN = """
import tempfile
from ddpm.cli.train import train
from ddpm.config import compose_config
from tests.helpers.cli import TINY
out = tempfile.mkdtemp()
train(compose_config(overrides=[*TINY, "logger=none", "trainer.max_steps=1"], output_dir=out))
"""


def page_faults(setup: str) -> int:
    code = CHURN.format(setup=textwrap.dedent(setup), blocks=BLOCKS)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def test_retained_memory_is_not_faulted_in_again():
    default = page_faults("")
    retained = page_faults("from ddpm.host_memory import retain_freed_memory\nassert retain_freed_memory()")
    # glibc's defaults give the freed blocks back to the kernel, so every round maps them in again
    assert default > PAGES_TOUCHED // 2
    assert retained < PAGES_TOUCHED // 100


def test_a_training_run_retains_freed_memory():
    """train.py's entry point applies the setting before training (as sample.py and evaluate.py do)."""
    assert page_faults(TRAINING_RUN) < PAGES_TOUCHED // 100
