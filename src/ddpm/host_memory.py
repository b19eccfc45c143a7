"""Keep freed host memory in the process, so a training step does not page-fault its activations back in.

glibc's malloc hands blocks above its mmap threshold (128 KiB at start, adapted upwards as blocks are freed) to the
kernel on free, and trims the top of its heap above a trim threshold. A CPU training step allocates and frees the
same few hundred MB of activations and gradients every step, so by default each step maps them in again: on this
project's 2-core machines, the matched UNet of benchmarks/bench_train.py took ~75,000 minor page faults (each a
fresh zeroed page from the kernel) and ~0.12 s of kernel time per 1.1 s step. With blocks up to glibc's largest mmap
threshold (32 MiB on 64-bit) served from the heap and the heap trimmed only above 2 GiB free, later steps take no
page faults; the process keeps its peak footprint, which a training run reaches in its first step anyway.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt(3) parameters of glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; mallopt refuses more
TRIM_THRESHOLD = 2**31 - 1  # trim the heap only above 2 GiB free (mallopt takes an int)


def retain_freed_memory() -> bool:
    """Serve blocks up to 32 MiB from the heap and keep what is freed (glibc only); True if glibc took the settings.

    Idempotent and process-wide; a no-op returning False on other C libraries (macOS, musl, Windows).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own malloc: glibc's, checked above
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting either fixes both thresholds (glibc stops adapting them)
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    trim_set = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_set and trim_set
