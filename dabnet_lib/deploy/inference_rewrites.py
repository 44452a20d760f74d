"""Exact (up to float rounding) rewrites of an eval-mode DABNet for fast inference.

- :func:`fold_batchnorm`: every BatchNorm that directly follows a convolution folded into it.
- :class:`InferenceForward`: the same modules run in an order the compiler handles better (shared
  input pyramid, BN-PReLU applied per concatenated part, separable x8 upsampling).

Both keep the model's contract, images (N, 3, H, W) -> logits (N, C, H, W), and never modify the
model they are given (``fold_batchnorm`` copies; ``InferenceForward`` only reads).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import ModuleT
from ..model.dabnet import BNPReLU, Conv, DABNet, DownSamplingBlock

# --------------------------------------------------------------------------- BatchNorm folding


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(running_mean, running_var) of an eval BatchNorm; a BN built without running statistics
    (``track_running_stats=False``) normalises by the batch and cannot be folded or split."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm2d without running statistics (track_running_stats=False): not an eval-mode BN")
    return bn.running_mean, bn.running_var


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv (with bias) computing ``bn(conv(x))`` in eval mode; arithmetic in float64."""
    w = conv.weight.detach().double()
    mean, var = (t.double() for t in _running_stats(bn))
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    fused = copy.deepcopy(conv)  # same geometry, padding mode, device and dtype
    with torch.no_grad():
        fused.weight.copy_((w * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
    fused.bias = nn.Parameter(((bias - mean) * scale + beta).to(conv.weight.dtype))
    return fused


def fold_batchnorm(model: ModuleT) -> ModuleT:
    """A copy of ``model`` (eval mode) with each BatchNorm that directly follows a conv folded into it.

    In DABNet that is ``Conv.conv`` -> ``Conv.bn_prelu.bn`` (stem, DAB 3x3 and branch convs) and the
    non-widening down-sampling block's conv -> its ``bn_prelu.bn``. Folded BNs become ``nn.Identity``;
    the PReLUs stay. The original model is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, Conv) and module.bn_prelu is not None and isinstance(module.bn_prelu.bn, nn.BatchNorm2d):
            module.conv = _fold_conv_bn(module.conv, module.bn_prelu.bn)
            module.bn_prelu.register_module("bn", nn.Identity())  # replaces the BatchNorm2d
        elif (
            isinstance(module, DownSamplingBlock)
            and not module.widen
            and module.conv3x3.bn_prelu is None
            and isinstance(module.bn_prelu.bn, nn.BatchNorm2d)
        ):
            module.conv3x3.conv = _fold_conv_bn(module.conv3x3.conv, module.bn_prelu.bn)
            module.bn_prelu.register_module("bn", nn.Identity())
    return folded


def _bn_prelu_by_part(block: BNPReLU, parts: list[torch.Tensor]) -> torch.Tensor:
    """``block(torch.cat(parts, 1))`` computed part by part, then concatenated.

    BatchNorm (eval) and PReLU act per channel, so this is the same arithmetic; it lets the compiler
    write each part straight into the concatenated buffer in the convolutions' layout instead of
    concatenating first and transposing.
    """
    bn, act = block.bn, block.acti
    outs, start = [], 0
    for part in parts:
        sl = slice(start, start + part.shape[1])
        start += part.shape[1]
        if isinstance(bn, nn.BatchNorm2d):
            mean, var = _running_stats(bn)
            part = F.batch_norm(
                part,
                mean[sl],
                var[sl],
                bn.weight[sl] if bn.weight is not None else None,
                bn.bias[sl] if bn.bias is not None else None,
                False,
                0.0,
                bn.eps,
            )
        outs.append(F.prelu(part, act.weight if act.weight.numel() == 1 else act.weight[sl]))
    return torch.cat(outs, 1)


def _upsample_axis(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of ``x`` by an integer ``factor`` along ``dim``.

    Output ``factor*i + r`` lies at source ``i + d_r``, ``d_r = (2r + 1 - factor) / (2 factor)``:
    a blend of element i with its left (d_r < 0) or right neighbour, edges replicated, which is
    what ``F.interpolate`` computes (clamped indices). Written as shifted copies, weighted sums and
    an interleave, all vectorisable pointwise work for the compiler.
    """
    n = x.shape[dim]
    prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
    nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
    outs = []
    for r in range(factor):
        d = (2 * r + 1 - factor) / (2 * factor)
        outs.append(prev * -d + x * (1 + d) if d < 0 else x * (1 - d) + nxt * d)
    return torch.stack(outs, dim + 1).flatten(dim, dim + 1)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (N, C, h, w) -> (N, C, *size),
    done as two separable NCHW passes (width, then height, the order PyTorch's kernel blends in)
    when ``size`` is an integer multiple of (h, w); about 6x faster than Inductor's gather-based
    kernel here. Other sizes use ``F.interpolate``."""
    (h, w), (H, W) = x.shape[-2:], size
    if H % h or W % w:
        return F.interpolate(x, size, mode="bilinear", align_corners=False)
    x = x.contiguous()
    if w != W:
        x = _upsample_axis(x, W // w, 3)
    if h != H:
        x = _upsample_axis(x, H // h, 2)
    return x


class InferenceForward(nn.Module):
    """``DABNet.forward`` rewritten for compiled inference (eval only), same modules and arithmetic.

    The input pyramid is pooled once and shared (``down_k`` is k nested 3x3/2 average pools, so
    ``down_3(x) == pool(down_2(x))``), each BN-PReLU after a concatenation is applied part by part
    (:func:`_bn_prelu_by_part`) and the final x8 upsampling is :func:`upsample_bilinear` (equal to
    ``F.interpolate`` up to float rounding). (N, 3, H, W) -> (N, C, H, W).
    """

    def __init__(self, net: nn.Module, fast_upsample: bool = True) -> None:
        if not isinstance(net, DABNet):
            raise TypeError(f"InferenceForward rewrites DABNet.forward; got a {type(net).__name__}")
        super().__init__()
        self.net = net
        self.fast_upsample = fast_upsample

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        net = self.net
        inject = net.config.input_injection
        h, w = image.shape[-2:]
        parts = [net.init_conv(image)]
        if inject:
            p1 = net.down_1.pool[0](image)
            parts.append(p1)
        x1_0 = net.downsample_1(_bn_prelu_by_part(net.bn_prelu_1, parts))
        parts = [net.DAB_Block_1(x1_0), x1_0]
        if inject:
            p2 = net.down_2.pool[1](p1)
            parts.append(p2)
        x2_0 = net.downsample_2(_bn_prelu_by_part(net.bn_prelu_2, parts))
        parts = [net.DAB_Block_2(x2_0), x2_0]
        if inject:
            parts.append(net.down_3.pool[2](p2))
        out = net.classifier(_bn_prelu_by_part(net.bn_prelu_3, parts))
        if self.fast_upsample:
            return upsample_bilinear(out, (h, w))
        return F.interpolate(out, (h, w), mode="bilinear", align_corners=False)


def count_batchnorms(model: nn.Module) -> int:
    """Number of ``nn.BatchNorm2d`` modules left in ``model``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
