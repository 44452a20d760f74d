"""Keeping freed host memory (dabnet_lib.malloc_reuse): no page faults for a buffer freed and allocated again."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dabnet_lib import malloc_reuse

ROOT = Path(__file__).resolve().parents[1]

# Allocates, touches and frees a 64 MiB buffer (above glibc's largest mmap threshold, 32 MiB) six times and prints
# the minor page faults of the last five rounds; with argv[1] == "kept" it first calls keep_freed_memory().
_PROBE = """
import resource, sys
import numpy as np
from dabnet_lib.malloc_reuse import keep_freed_memory
state = keep_freed_memory() if sys.argv[1] == "kept" else "default"
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = np.empty(16 * 1024 * 1024, dtype=np.float32)
    buf.fill(1.0)
    del buf
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(state, sum(faults[1:]))
"""


def _probe(kind: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, kind], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only (the CI and the VMs are glibc)")
def test_kept_memory_is_reused_without_page_faults() -> None:
    state, default_faults = _probe("default")
    # each round faults the buffer in again: one fault per page, at least one per 2 MiB transparent huge page
    assert state == "default" and default_faults >= 5 * 32, default_faults
    state, kept_faults = _probe("kept")
    assert state == "kept" and kept_faults <= default_faults // 10, (kept_faults, default_faults)


def test_opt_out_and_other_platforms_leave_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(malloc_reuse.ctypes, "CDLL", lambda *_a: calls.append("CDLL"))
    malloc_reuse.keep_freed_memory.cache_clear()
    monkeypatch.setenv(malloc_reuse.OPT_OUT_ENV, "0")
    assert malloc_reuse.keep_freed_memory() == "off (DABNET_KEEP_FREED_MEMORY=0)"
    malloc_reuse.keep_freed_memory.cache_clear()
    monkeypatch.delenv(malloc_reuse.OPT_OUT_ENV)
    monkeypatch.setattr(malloc_reuse.platform, "libc_ver", lambda: ("", ""))
    assert malloc_reuse.keep_freed_memory() == "default (not glibc)"
    malloc_reuse.keep_freed_memory.cache_clear()
    assert calls == []  # mallopt was never looked up
