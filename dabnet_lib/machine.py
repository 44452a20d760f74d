"""What machine this is: the CPU's model name and instruction-set flags, whether it has bf16
arithmetic units, and when a measurement shared it with another process (:data:`BUSY_CPU_SHARE`).
Measured numbers name their hardware with these; the training autotuner keys its cache on them."""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only by the functions that need it
    import torch

#: A process's CPU time / (wall time x its intra-op threads) below this means another process held the cores
#: meanwhile (2-core Sapphire Rapids, 2 threads, training steps: 1.00 alone, 0.50 beside two training runs).
BUSY_CPU_SHARE = 0.75


def cpu_share(cpu_seconds: float, wall_seconds: float, threads: int) -> float | None:
    """This process's CPU time / (wall time x ``threads``), 0..~1 (1: every thread ran the whole time; below
    :data:`BUSY_CPU_SHARE`: another process held the cores); None when no wall time was measured."""
    return cpu_seconds / (wall_seconds * threads) if wall_seconds > 0 and threads > 0 else None


#: /proc/cpuinfo flags of CPUs that compute bf16 in hardware (AVX512-BF16 dot products, AMX tiles).
#: Without one of them PyTorch emulates bf16 convolutions in fp32 and converts: several times slower.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def cpu_name() -> str:
    """The CPU model as the kernel reports it (``/proc/cpuinfo``), else ``platform.processor()``."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (``/proc/cpuinfo`` ``flags``; empty where unknown)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def isa_summary(flags: frozenset[str] | None = None) -> str:
    """The vector units that decide which training setup is fast, e.g. ``AVX-512, AMX-BF16`` or
    ``AVX2, no bf16 units`` (a virtual machine's model name often hides the CPU generation)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "unknown ISA"
    vec = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no bf16 units"
    return f"{vec}, {bf16}"


def cpu_label() -> str:
    """``<CPU model> [<ISA summary>]``: how measured numbers name the CPU."""
    return f"{cpu_name()} [{isa_summary()}]"


def has_bf16_units(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes bf16 in hardware (see :data:`BF16_FLAGS`). Where /proc/cpuinfo is
    missing (not Linux), oneDNN's own check decides."""
    flags = cpu_flags() if flags is None else flags
    if flags:
        return bool(flags & BF16_FLAGS)
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def device_label(device: torch.device | str = "cpu") -> str:
    """The hardware a number was measured on (training summaries, FPS tables): the GPU's name for a CUDA
    device, else ``<CPU model> [<ISA summary>] (<N> logical CPUs)``."""
    import os

    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"{cpu_label()} ({os.cpu_count()} logical CPUs)"
