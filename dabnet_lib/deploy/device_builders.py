"""How each inference variant is built on an accelerator (:mod:`.gpu_timing` times them; the CPU builds are
in :mod:`.inference_variants`, whose ``REGISTRY`` names both).

Every builder takes the model already on ``device`` (eval mode) and returns ``(fn, notes)``: ``fn`` maps
images ``(N, 3, H, W)`` on ``device`` to float32 logits ``(N, C, H, W)`` under ``no_grad``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..devices import cuda_bf16_native, to_memory_format
from .inference_rewrites import InferenceForward, fold_batchnorm

Fn = Callable[[torch.Tensor], torch.Tensor]
DeviceBuilder = Callable[[nn.Module, torch.device], tuple[Fn, str]]


def no_grad_fn(fn: Fn, dtype: torch.dtype | None = None, layout: torch.memory_format | None = None) -> Fn:
    """``fn`` under ``no_grad``, its input in ``layout`` (default: as given), under ``torch.autocast`` to
    ``dtype`` when one is given; the output as float32."""

    def run(images: torch.Tensor) -> torch.Tensor:
        x = images if layout is None else images.contiguous(memory_format=layout)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return fn(x).float()

    return run


def eager(model: nn.Module, device: torch.device) -> tuple[Fn, str]:
    return no_grad_fn(model), "fp32 (TF32 off)" if device.type == "cuda" else "fp32"


def channels_last(model: nn.Module, _device: torch.device) -> tuple[Fn, str]:
    cl = torch.channels_last
    return no_grad_fn(to_memory_format(copy.deepcopy(model), cl), layout=cl), "fp32, NHWC"


def folded(model: nn.Module, _device: torch.device) -> tuple[Fn, str]:
    return no_grad_fn(fold_batchnorm(model)), "fp32, BatchNorm folded into the convolutions"


def compiled(model: nn.Module, device: torch.device) -> tuple[Fn, str]:
    cl = torch.channels_last
    module = InferenceForward(to_memory_format(fold_batchnorm(model), cl))
    notes = f"folded + channels_last + InferenceForward, torch.compile (inductor, {device.type} defaults)"
    return no_grad_fn(torch.compile(module, dynamic=False), layout=cl), notes


def autocast(dtype: torch.dtype, name: str) -> DeviceBuilder:
    """The builder of variant ``name``: eager under ``torch.autocast`` to ``dtype`` (fp16 or bf16)."""

    def build(model: nn.Module, device: torch.device) -> tuple[Fn, str]:
        notes = f"eager under torch.autocast({device.type}, {name})"
        if dtype == torch.bfloat16 and device.type == "cuda" and not cuda_bf16_native(device):
            notes += "; this GPU has no native bf16 (compute capability < 8.0): emulated, slow"
        return no_grad_fn(model, dtype=dtype), notes

    return build
