"""Devices in one place: which torch device a command runs on (:func:`resolve_device`), and what this machine's
CUDA device offers: whether there is one (a clear error when a command needs it and there is none), native bf16,
and a one-line description for provenance. Shared bottom layer: imports only errors.

Unverified until a GPU run: this module only reads ``torch.cuda`` queries; on CPU the tests mock them.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from .errors import DabnetError

#: The words every "needs CUDA" error starts with (scripts and tests look for them).
NO_CUDA = "no CUDA device"


def require_cuda(what: str) -> torch.device:
    """``torch.device("cuda")``, or DabnetError naming ``what`` when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        raise DabnetError(
            f"{what}: {NO_CUDA} (torch {torch.__version__}, CUDA build {build}): run it on a machine "
            "with an NVIDIA GPU and the CUDA build of torch 2.13.0, or use --device cpu"
        )
    return torch.device("cuda")


def cuda_bf16_native(device: torch.device | str | int | None = None) -> bool:
    """True when ``device`` computes bf16 in hardware (compute capability >= 8.0, Ampere or newer).
    ``torch.cuda.is_bf16_supported()`` also counts emulation, which makes bf16 convolutions slow on
    V100/T4/1080Ti."""
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def gpu_description(device: torch.device | str | int | None = None) -> str:
    """``"<GPU name> (compute capability X.Y, N GiB), CUDA <version>, cuDNN <version>"``."""
    props = torch.cuda.get_device_properties(device)
    return (
        f"{props.name} (compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DabnetError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DabnetError(f"device {device!r} requested but CUDA is not available here: use --device cpu")
    return dev


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def to_memory_format(
    module: ModuleT, memory_format: torch.memory_format, device: torch.device | str | None = None
) -> ModuleT:
    """``module.to(device, memory_format=...)``: moves the 4-d parameters and buffers in place and returns
    ``module`` with its own type (channels_last: oneDNN's and cuDNN's faster layout)."""
    # torch's type hints for Module.to list device/dtype/tensor overloads only; the memory_format keyword
    # that it documents and accepts at runtime is missing from them.
    return module.to(device, memory_format=memory_format)  # type: ignore[call-overload]
