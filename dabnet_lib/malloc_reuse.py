"""Reuse of freed host memory in long CPU training runs (glibc's malloc only).

glibc gives every allocation above its mmap threshold (at most 32 MiB) fresh pages from the kernel and hands them
back when it is freed, and trims the top of its heap when much of it is free. A training step allocates and frees
its activations again every time, so each step page-faults and zero-fills them anew: about 190,000-290,000 minor
page faults (~1 GB) per step of DABNet at 360x480, batch 8, and 16,000-36,000 at 180x240 (2-core Sapphire Rapids,
2 threads, fp32 channels_last compiled; ``python scripts/measure_malloc_reuse.py``). :func:`keep_freed_memory`
asks malloc to serve everything from its heap and never to trim it: after the first step no page faults remain; a
step timed alone ran 1.17x faster at 360x480 (the script prints the ratio it measures), while short training runs
did not yet separate the gain from a shared VM's noise (README). What is trained is unchanged (the same arithmetic
on other addresses); the price is that the process keeps its peak host memory until it exits.

Process-wide and one-way (glibc cannot go back to its adaptive thresholds). ``DABNET_KEEP_FREED_MEMORY=0`` in the
environment turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

#: Environment variable: ``0`` keeps glibc's default behaviour.
OPT_OUT_ENV = "DABNET_KEEP_FREED_MEMORY"

# mallopt(3) parameter numbers (glibc <malloc.h>); the value -1 for M_TRIM_THRESHOLD turns trimming off.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory for reuse (see the module docstring); returns what happened, for
    logs and ``recipe.json``: ``"kept"``, ``"off (DABNET_KEEP_FREED_MEMORY=0)"``, or ``"default (...)"`` where
    this is not glibc or mallopt refused."""
    if os.environ.get(OPT_OUT_ENV, "").strip() == "0":
        return f"off ({OPT_OUT_ENV}=0)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "default (no mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, -1) != 1:
        return "default (mallopt refused)"
    return "kept"
