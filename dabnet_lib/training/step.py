"""One optimisation step and the numerical safety around it.

- :func:`autocast_dtype` maps a recipe's ``amp`` to an autocast dtype.
- :func:`train_step` runs forward, loss, backward and the optimiser step; it skips the update
  (and says so) when the loss or any gradient is not finite, instead of letting one bad step
  poison Adam's moments and, a few hundred steps later, every weight.
- :func:`training_layout` picks channels_last only where this PyTorch computes correct
  gradients in it. Measured with torch 2.13 on CPU: under bf16 autocast the weight gradient of a
  *depthwise convolution dilated along H* in channels_last is wrong (garbage, sometimes inf;
  relative error up to 1e35), while NCHW bf16 and every fp32 layout agree with the fp32 reference
  to bf16 precision. DABNet's DAB modules are exactly such convolutions, so a bf16 channels_last
  run diverged to NaN after ~2100 steps. :func:`bf16_channels_last_grad_error` probes the defect
  once per process, so the workaround switches itself off once PyTorch is fixed. torch.compile
  re-creates the defect by itself (inductor converts convolutions to channels_last), so the
  workaround also turns that layout optimisation off.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..devices import cuda_bf16_native

#: Relative weight-gradient error (vs fp32 NCHW) above which a layout counts as broken; bf16
#: rounding gives about 5e-3.
GRAD_PROBE_TOLERANCE = 0.05


def autocast_dtype(recipe_amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a resolved ``amp`` ("off" | "bf16" | "fp16"; None = full precision).
    ``"auto"`` (resolved by :mod:`dabnet_lib.training.autotune` before training) means: on CUDA bf16 where
    native, else fp16; on CPU full precision."""
    if recipe_amp == "off" or (recipe_amp == "auto" and device.type != "cuda"):
        return None
    if recipe_amp == "fp16" or (recipe_amp == "auto" and not cuda_bf16_native(device)):
        return torch.float16
    return torch.bfloat16


@functools.cache
def bf16_channels_last_grad_error(device_type: str = "cpu") -> float:
    """Worst relative error of the weight gradient of dilated depthwise convolutions, shapes as in
    DABNet's DAB modules ((3, 1) and (3, 3) kernels, dilation 2 and 8, 64 channels at 45x60), computed
    in channels_last under bf16 autocast, against fp32 NCHW. ``inf`` when non-finite. Cached."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for kernel in ((3, 1), (3, 3)):
        for dilation in (2, 8):
            dil = (dilation, dilation if kernel[1] > 1 else 1)
            pad = (dil[0] * (kernel[0] // 2), dil[1] * (kernel[1] // 2))
            weight = torch.randn(64, 1, *kernel, generator=gen)
            x = torch.randn(4, 64, 45, 60, generator=gen)
            grad_out = torch.randn(4, 64, 45, 60, generator=gen)
            grads = []
            for cl in (False, True):
                mf = torch.channels_last if cl else torch.contiguous_format
                w = weight.clone().to(device_type, memory_format=mf).requires_grad_(True)
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cl):
                    y = torch.nn.functional.conv2d(
                        x.to(device_type, memory_format=mf), w, padding=pad, dilation=dil, groups=64
                    )
                (y.float() * grad_out.to(device_type)).sum().backward()
                assert w.grad is not None  # backward() just filled it
                grads.append(w.grad.float().cpu())
            ref, got = grads
            err = float((got - ref).abs().max() / ref.abs().max())
            worst = max(worst, err if err == err else float("inf"))
    return worst


@dataclass(frozen=True)
class TrainingLayout:
    """How to lay out training tensors: ``memory_format`` for model and inputs, ``compile_options``
    for ``torch.compile(..., options=...)`` (None: defaults) and a ``note`` when channels_last was
    refused."""

    memory_format: torch.memory_format
    compile_options: dict[str, Any] | None = None
    note: str | None = None

    def compile(self, module: nn.Module) -> nn.Module:
        """``torch.compile(module)``: static shapes, this layout's inductor options; compiles at the first call."""
        compiled = torch.compile(module, dynamic=False, options=self.compile_options)
        if not isinstance(compiled, nn.Module):  # a module comes back wrapped in an OptimizedModule
            raise TypeError(f"torch.compile returned a {type(compiled).__name__}, not a module")
        return compiled


def training_layout(channels_last: bool, amp_dtype: torch.dtype | None, device: torch.device) -> TrainingLayout:
    """channels_last when requested, unless bf16 autocast's channels_last gradients fail
    :func:`bf16_channels_last_grad_error`: then NCHW. Under bf16 with that defect torch.compile's
    inductor is always told not to convert convolutions to channels_last on its own
    (``layout_optimization``), also when NCHW was asked for: it otherwise does so by itself and
    brings the wrong gradients back."""
    if amp_dtype == torch.bfloat16:
        err = bf16_channels_last_grad_error(device.type)
        if not err <= GRAD_PROBE_TOLERANCE:
            note = (
                (
                    f"channels_last off: this PyTorch ({torch.__version__}) computes wrong bf16 channels_last "
                    f"gradients for dilated depthwise convolutions on {device.type} (probe relative error {err:.3g}); "
                    "training in "
                    "NCHW, also inside torch.compile (correct, somewhat slower)"
                )
                if channels_last
                else None
            )
            return TrainingLayout(torch.contiguous_format, {"layout_optimization": False}, note)
    return TrainingLayout(torch.channels_last if channels_last else torch.contiguous_format)


def grads_finite(params: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: every gradient in ``params`` (tensors with ``.grad``) is finite."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    return torch.stack(torch._foreach_norm(grads)).isfinite().all()


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, bool | torch.Tensor]:
    """One optimisation step on a batch (images (N, 3, H, W) float, labels (N, H, W) int64, on the
    model's device). Returns ``(loss, applied)``: the detached loss and whether the update was made
    (a bool, or a 0-d bool tensor on the model's device that the caller reads when it syncs anyway).

    Without a GradScaler (fp32, bf16) a non-finite loss or gradient skips the update, leaving weights
    and optimiser state untouched (one host sync per step, free on CPU). With fp16's GradScaler the
    scaler skips the update itself (inf/NaN in the unscaled gradients) and lowers its scale; ``applied``
    is then read from the scaler's found-inf flags, on the device, with no extra host sync."""
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(images)
    loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if not scaler.is_enabled():
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not bool(loss.isfinite() & grads_finite(params)):
            optimizer.zero_grad(set_to_none=True)
            return loss.detach(), False
        scaler.step(optimizer)
        scaler.update()
        return loss.detach(), True
    scaler.step(optimizer)
    applied = scaler_step_applied(scaler, optimizer, loss.device) & loss.detach().isfinite()
    scaler.update()
    return loss.detach(), applied


def scaler_step_applied(
    scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, device: torch.device
) -> torch.Tensor:
    """After ``scaler.step(optimizer)`` and before ``scaler.update()``: a 0-d bool tensor on ``device``,
    True when the scaler applied the update (no inf/NaN found in any device's gradients)."""
    # GradScaler keeps its per-device found-inf flags (float 0/1) until update(); reading them here is the
    # documented behaviour of step() ("skipped if found_inf"), through its one accessor.
    found = scaler._found_inf_per_device(optimizer)
    if not found:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack([f.to(device) for f in found.values()]).sum() == 0
