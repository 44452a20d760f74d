"""Exact fast CPU training kernels for DABNet's dilated depth-wise convolutions.

PyTorch's CPU backward of a *dilated* depth-wise convolution (``groups == channels``) falls on a
slow oneDNN/native path: measured 1.3-1.7x slower than the arithmetic needs on an Intel Sapphire
Rapids and 2.5-3.5x on an AMD Zen3. :class:`FastDepthwiseConv2d` keeps the stock forward (fast) and
writes the backward out of fast pieces:

- input gradient: the same depth-wise convolution of the output gradient with the kernel flipped
  (exact for stride 1 and "same" padding ``dilation * (k - 1) / 2``, which every DAB branch uses);
- weight gradient: one multiply-and-sum per kernel tap, ``sum_{n,h,w} g[n,c,h,w] * x[n,c,h+dy,w+dx]``
  over the overlapping window (no padded copy), accumulated in float32.

Non-dilated depth-wise convolutions keep the stock backward: it is faster there (measured), so the
module only takes the custom path when some dilation is > 1 (:func:`uses_custom_backward`).

:class:`FastPReLU` keeps the stock forward and computes the backward from the ReLU backward kernel
(``threshold_backward``, vectorised) instead of ``_prelu_kernel_backward``: ``g+ = g where x > 0``,
``g- = g - g+``, input gradient ``g+ + w * g-``, slope gradient ``sum(g- * x)`` per channel; the
same values as the stock kernel (x == 0 takes the slope side, as PyTorch does), measured 2-4x faster.
On activations of at least :data:`FUSED_PRELU_MIN_ELEMENTS` the element-wise part (``g+ + w * g-`` and
``g- * x``) is one inductor-compiled pass (:func:`_prelu_grad_parts`: reads ``g`` and ``x`` once instead of
eight tensor reads in four passes) and the slope gradient the same ``sum`` as before, so both gradients are
bit-identical to the written-out path (tested); smaller tensors, a traced or compiled model, and a machine
where inductor cannot build (no C++ compiler) keep the written-out path.

:class:`FastBNPReLU` (opt-in: ``use_fast_ops(..., bn_prelu=True)``, the recipe field ``fused_bn_prelu``) runs a
training-mode BatchNorm and the PReLU after it as one inductor-compiled function on activations of at least
:data:`FUSED_BN_PRELU_MIN_ELEMENTS`, so forward and backward each read the activation once instead of once per
op. Same parameters, buffers and running-statistics update; the values equal the stock pair's within fp32
rounding (the batch statistics are summed in another order), not bit for bit, hence opt-in. Eval mode,
autocast, a compiled or traced model and small activations keep the stock pair; where inductor cannot build
the function, one warning and the stock pair. ``dabnet bench-ops`` times the training step with it and
``--no-bn-prelu`` without it.

:func:`use_fast_ops` swaps the eligible ``nn.Conv2d`` and ``nn.PReLU`` modules of a model in place
(and back) by changing their class only: the same parameter and buffer objects, the same state-dict keys, so
checkpoints load either way and an optimizer built before the swap keeps working.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dabnet import BNPReLU

__all__ = [
    "FastBNPReLU",
    "FastDepthwiseConv2d",
    "FastPReLU",
    "count_fast_ops",
    "fast_ops_rule",
    "is_eligible",
    "use_fast_ops",
    "uses_custom_backward",
]


def _tap_windows(size: int, offset: int) -> tuple[slice, slice]:
    """(output window, input window) along one axis of length ``size`` for a tap at ``offset``:
    output position ``i`` reads input ``i + offset`` where it exists (zero padding elsewhere)."""
    n = max(0, size - abs(offset))
    return slice(max(0, -offset), max(0, -offset) + n), slice(max(0, offset), max(0, offset) + n)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of a reduction: float32 for bf16/fp16 inputs, else the input's own."""
    return torch.promote_types(dtype, torch.float32)


def _depthwise_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, weight_shape: torch.Size, padding: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    """Weight gradient ``(C, 1, kh, kw)`` of a stride-1 depth-wise conv, one reduction per tap.

    grad, x: ``(N, C, H, W)`` (output gradient and input, same shape for "same" padding). Sums are
    accumulated in at least float32 (:func:`_acc_dtype`) and returned in ``x``'s dtype.
    """
    _, _, kh, kw = weight_shape
    h, w = x.shape[-2:]
    taps = []
    for i in range(kh):
        out_h, in_h = _tap_windows(h, i * dilation[0] - padding[0])
        for j in range(kw):
            out_w, in_w = _tap_windows(w, j * dilation[1] - padding[1])
            g, xs = grad[:, :, out_h, out_w], x[:, :, in_h, in_w]
            if g.numel() == 0:  # the tap never overlaps the image (dilation >= size)
                taps.append(grad.new_zeros(grad.shape[1], dtype=_acc_dtype(x.dtype)))
            else:
                acc = _acc_dtype(x.dtype)  # bf16: products in float32 too, as oneDNN's bf16 kernels do
                taps.append((g.to(acc) * xs.to(acc)).sum((0, 2, 3)))
    return torch.stack(taps, 1).to(x.dtype).reshape(weight_shape)


class _DilatedDepthwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` with the backward written out."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, ctx.padding, ctx.dilation, weight.shape[0])
        if ctx.needs_input_grad[1]:
            grad_w = _depthwise_weight_grad(grad, x, weight.shape, ctx.padding, ctx.dilation)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3), dtype=_acc_dtype(grad.dtype)).to(grad.dtype)
        return grad_x, grad_w, grad_b, None, None


def is_eligible(conv: nn.Module) -> bool:
    """True for a plain ``nn.Conv2d`` (or a :class:`FastDepthwiseConv2d`) that is depth-wise
    (``groups == in == out channels``), stride 1, zero "same" padding ``dilation * (k - 1) / 2`` with
    odd k: the convolutions of DABNet's branches for every ``DABNetConfig``."""
    if type(conv) not in (nn.Conv2d, FastDepthwiseConv2d) or not isinstance(conv, nn.Conv2d):
        return False  # (the isinstance is implied by the type check; it tells the type checker)
    c = conv.in_channels
    if not (conv.groups == c == conv.out_channels and c > 1) or conv.stride != (1, 1):
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    return all(
        k % 2 == 1 and p == d * (k - 1) // 2
        for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation, strict=True)
    )


def uses_custom_backward(conv: nn.Conv2d) -> bool:
    """Whether a fast conv takes the written-out backward: when any dilation is > 1 (measured faster
    there; the stock backward is faster for dilation 1)."""
    return max(conv.dilation) > 1


class FastDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (depth-wise, stride 1, "same" padding) whose CPU backward is
    :class:`_DilatedDepthwiseConv` when dilated. Same parameters, same state-dict keys, same forward
    arithmetic; under CPU autocast input and weight are cast to the autocast dtype first, as the stock
    convolution does. Off the CPU, without gradients, and while tracing it is the stock conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if (
            not needs_grad
            or x.device.type != "cpu"
            or not uses_custom_backward(self)
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
        ):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast("cpu", enabled=False):
            return _DilatedDepthwiseConv.apply(x, weight, bias, self.padding, self.dilation)


#: Activations with at least this many elements take the fused element-wise PReLU backward. Below it a compiled
#: call's fixed cost (guards, launch) outweighs the passes it saves, and tiny runs (the smoke profile) never
#: wait for inductor to build the kernel.
FUSED_PRELU_MIN_ELEMENTS = 1 << 19


def _prelu_grad_parts_eager(grad: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(grad_x, g- * x)`` of PReLU for ``grad``, ``x`` and a broadcastable ``slope``: ``g+`` is ``grad`` where
    ``x > 0`` (ReLU's backward kernel), ``g- = grad - g+``; written out in four passes."""
    positive = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
    negative = grad - positive
    return torch.addcmul(positive, negative, slope), negative * x


def _prelu_grad_parts_fusable(grad: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same two tensors, bit for bit, written for inductor to fuse into one pass: where ``x > 0`` the
    written-out ``g+ + w * 0`` is ``g`` and ``g - g`` is 0; elsewhere ``0 + w * g`` is ``w * g`` (one rounding)."""
    positive = x > 0
    negative = torch.where(positive, torch.zeros_like(grad), grad)
    return torch.where(positive, grad, grad * slope), negative * x


_fused_prelu_parts: Any = None  # the compiled _prelu_grad_parts_fusable, built on first use; False: unavailable


def _prelu_grad_parts(grad: torch.Tensor, x: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(grad_x, g- * x)``: one compiled pass for large activations in eager autograd, else written out."""
    global _fused_prelu_parts
    if grad.numel() < FUSED_PRELU_MIN_ELEMENTS or _fused_prelu_parts is False or torch.compiler.is_compiling():
        return _prelu_grad_parts_eager(grad, x, slope)
    if _fused_prelu_parts is None:
        _fused_prelu_parts = torch.compile(_prelu_grad_parts_fusable, dynamic=True, fullgraph=True)
    try:
        return _fused_prelu_parts(grad, x, slope)
    except Exception as exc:  # noqa: BLE001  (no C++ toolchain, an inductor error: the written-out path is exact)
        _fused_prelu_parts = False
        warnings.warn(
            f"fast_ops: the fused PReLU backward could not be built ({type(exc).__name__}); "
            "PReLU's backward stays written out (same values, slower)",
            RuntimeWarning,
            stacklevel=2,
        )
        return _prelu_grad_parts_eager(grad, x, slope)


class _PReLUFn(torch.autograd.Function):
    """``F.prelu(x, weight)`` (per-channel or single slope) with the backward from ReLU's kernel."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        slope = weight.to(grad.dtype)
        if weight.numel() > 1 and x.dim() > 1:  # per channel (dim 1)
            slope = slope.reshape(1, -1, *([1] * (x.dim() - 2)))
        grad_x, negative_x = _prelu_grad_parts(grad, x, slope)
        grad_w = None
        if ctx.needs_input_grad[1]:
            dims = [d for d in range(x.dim()) if not (weight.numel() > 1 and d == 1)]
            grad_w = negative_x.sum(dims, dtype=_acc_dtype(x.dtype)).reshape(weight.shape).to(weight.dtype)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_w


class FastPReLU(nn.PReLU):
    """``nn.PReLU`` whose CPU backward is :class:`_PReLUFn`'s; same parameter and forward. Off the
    CPU, without gradients, and while tracing it is the stock PReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if not needs_grad or x.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().forward(x)
        return _PReLUFn.apply(x, self.weight)


#: Activations with at least this many elements take the fused BN+PReLU function. ``python
#: scripts/measure_bn_prelu_fusion.py`` (quiet 2-core Sapphire Rapids, 2 threads, forward + backward against BN +
#: FastPReLU): 0.77-1.07x at 24,576-99,456 elements (the compiled call's fixed cost), 1.19-1.49x at 196,608-215,040
#: (``--size 64 96 --batch 4``) and 1.43-1.93x at every shape of a 180x240, batch-8 step (353,280-3,024,000).
FUSED_BN_PRELU_MIN_ELEMENTS = 1 << 17


def _bn_prelu_train(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    slope: torch.Tensor,
    momentum: float,
    eps: float,
) -> torch.Tensor:
    """Training-mode ``F.batch_norm`` (updates ``running_mean``/``running_var`` in place) then ``F.prelu``."""
    return F.prelu(F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps), slope)


_fused_bn_prelu: Any = None  # the compiled _bn_prelu_train, built on first use; False: unavailable


def _fused_bn_prelu_fn() -> Any:
    """The compiled :func:`_bn_prelu_train`, or None where inductor cannot build it (warned once)."""
    global _fused_bn_prelu
    if _fused_bn_prelu is None:
        fn = torch.compile(_bn_prelu_train, dynamic=True, fullgraph=True)
        try:  # build forward and backward once on a small input: a missing toolchain shows here, not mid-step
            x = torch.randn(2, 3, 4, 5, requires_grad=True)
            w, b, slope = (torch.full((3,), v, requires_grad=True) for v in (1.0, 0.0, 0.25))
            fn(x, w, b, torch.zeros(3), torch.ones(3), slope, 0.1, 1e-3).sum().backward()
            _fused_bn_prelu = fn
        except Exception as exc:  # noqa: BLE001  (no C++ toolchain, an inductor error: the stock pair is the reference)
            _disable_fused_bn_prelu(exc)
    return _fused_bn_prelu or None


def _disable_fused_bn_prelu(exc: Exception) -> None:
    """Switch the fused BN+PReLU off for the rest of the process, with one warning."""
    global _fused_bn_prelu
    _fused_bn_prelu = False
    warnings.warn(
        f"fast_ops: the fused BN+PReLU could not be built ({type(exc).__name__}: {str(exc)[:120]}); BN and PReLU "
        "stay separate (the stock values, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


class FastBNPReLU(BNPReLU):
    """:class:`~dabnet_lib.model.dabnet.BNPReLU` whose CPU training forward (and so backward) is one compiled
    function on large activations; same children ``bn`` and ``acti``, same state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if (
            not bn.training
            or not bn.track_running_stats
            or bn.momentum is None
            or bn.running_mean is None
            or bn.running_var is None
            or bn.num_batches_tracked is None
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or x.numel() < FUSED_BN_PRELU_MIN_ELEMENTS
            or not torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
        ):
            return super().forward(x)
        fn = _fused_bn_prelu_fn()
        if fn is None:
            return super().forward(x)
        # views: plain tensors to dynamo (a Parameter's shape is compiled as static: one graph per channel count)
        weight, bias, slope = bn.weight.view(-1), bn.bias.view(-1), self.acti.weight.view(-1)
        try:
            y = fn(x, weight, bias, bn.running_mean, bn.running_var, slope, bn.momentum, bn.eps)
        except Exception as exc:  # noqa: BLE001  (a shape inductor cannot build: the stock pair is the reference)
            _disable_fused_bn_prelu(exc)
            return super().forward(x)
        bn.num_batches_tracked.add_(1)  # as nn.BatchNorm2d's training forward does
        return y


def use_fast_ops(model: nn.Module, enabled: bool = True, bn_prelu: bool = False) -> nn.Module:
    """Swap ``model``'s eligible depth-wise convolutions (:func:`is_eligible`) to
    :class:`FastDepthwiseConv2d` and its PReLUs to :class:`FastPReLU` (``enabled``), and with ``bn_prelu`` also
    its BN+PReLU pairs to :class:`FastBNPReLU`; or all back to the stock modules (``enabled=False``), in place;
    returns ``model``.

    Only the modules' class changes: parameters, buffers, hooks and state-dict keys stay the same
    objects, so checkpoints load either way and an existing optimizer keeps its parameters.
    """
    for module in model.modules():
        if enabled and type(module) is nn.Conv2d and is_eligible(module):
            module.__class__ = FastDepthwiseConv2d
        elif enabled and type(module) is nn.PReLU:
            module.__class__ = FastPReLU
        elif type(module) in (BNPReLU, FastBNPReLU):
            module.__class__ = FastBNPReLU if enabled and bn_prelu else BNPReLU
        elif not enabled and type(module) in _STOCK:
            module.__class__ = _STOCK[type(module)]
    return model


_STOCK: dict[type, type] = {FastDepthwiseConv2d: nn.Conv2d, FastPReLU: nn.PReLU}


def count_fast_ops(model: nn.Module) -> dict[str, int]:
    """``{"fast": swapped convs, "custom_backward": those dilated, "prelu": swapped PReLUs, "bn_prelu": fused
    BN+PReLU pairs, "eligible_stock": eligible convs and PReLUs not swapped}``."""
    fast = [m for m in model.modules() if type(m) is FastDepthwiseConv2d]
    stock = [m for m in model.modules() if (type(m) is nn.Conv2d and is_eligible(m)) or type(m) is nn.PReLU]
    return {
        "fast": len(fast),
        "custom_backward": sum(uses_custom_backward(m) for m in fast),
        "prelu": sum(type(m) is FastPReLU for m in model.modules()),
        "bn_prelu": sum(type(m) is FastBNPReLU for m in model.modules()),
        "eligible_stock": len(stock),
    }


def fast_ops_rule(device: str | torch.device = "cpu") -> bool:
    """Whether to turn fast ops on for training by default: on the CPU (elsewhere the modules are the
    stock ops anyway). Backed by ``dabnet bench-ops`` (180x240, batch 8, 1 thread, Intel Sapphire
    Rapids, shared machine): fp32 1.12x and 1.26x, bf16 autocast 1.56x the stock ops; no measured
    case where they lose. The autotuner's own measurement on the running machine overrides it."""
    return torch.device(device).type == "cpu"
