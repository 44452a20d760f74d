"""Training losses: class-weighted cross-entropy and OHEM cross-entropy, both with an ignore index, and the
Lovász-softmax IoU surrogate that can be added to either.

Both take ``logits (N, C, H, W)`` float and ``target (N, H, W)`` int64 class ids (the ignore index
marks unlabelled pixels) and return a scalar: the weighted mean of the per-pixel cross-entropy over
the scored pixels, ``sum_i w[y_i] * nll_i / sum_i w[y_i]`` (the same as ``F.cross_entropy`` with
``weight=``). When no pixel is scored (all ignored) they return 0 that is still attached to the
graph, so ``backward()`` works and gives zero gradients instead of NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DabnetError

LOSSES = ("ce", "ohem")


class LossConfigError(DabnetError, ValueError):
    """A loss asked for with an unknown name or invalid arguments."""


def _as_weight(weight: torch.Tensor | np.ndarray | Sequence[float] | None) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(np.asarray(weight, dtype=np.float32) if not isinstance(weight, torch.Tensor) else weight)
    w = w.detach().float().reshape(-1)
    if w.numel() == 0 or not torch.isfinite(w).all() or (w < 0).any():
        raise LossConfigError(f"class weights must be finite and >= 0, got {w.tolist()}")
    return w


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, name: str) -> None:
    if logits.dim() != 4 or target.dim() != 3:
        raise LossConfigError(
            f"{name}: expected logits (N, C, H, W) and target (N, H, W), "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if (logits.shape[0], *tuple(logits.shape[2:])) != tuple(target.shape):
        raise LossConfigError(
            f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in batch or spatial size"
        )
    if weight is not None and weight.numel() != logits.shape[1]:
        raise LossConfigError(f"{name}: {weight.numel()} class weights for {logits.shape[1]} classes")


def _weighted_mean(
    nll: torch.Tensor, target: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """``sum(w * nll) / sum(w)`` over kept pixels; 0 (with graph) when nothing is kept. No host sync."""
    w = keep.to(nll.dtype)
    if weight is not None:
        w = w * weight.to(nll.dtype)[target]
    return (nll * w).sum() / w.sum().clamp_min(torch.finfo(nll.dtype).tiny)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with optional per-class weights ``(C,)`` and an ignore index.

    Equal to ``F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)`` except
    that an all-ignored batch gives 0 instead of NaN.
    """

    weight: torch.Tensor | None  # a buffer: moves with .to(), saved in the state dict

    def __init__(
        self, weight: torch.Tensor | np.ndarray | Sequence[float] | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", _as_weight(weight))

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, weighted={self.weight is not None}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.weight, type(self).__name__)
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        nll = F.cross_entropy(logits, safe, reduction="none")
        return _weighted_mean(nll, safe, valid, self.weight)


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (the official DABNet/Cityscapes rule).

    Per pixel, ``p`` = softmax probability of the true class. Kept pixels are those with
    ``p <= threshold`` where ``threshold = max(thresh, p_(min_kept))``, ``p_(k)`` being the k-th
    smallest ``p`` over the scored pixels: so every pixel under ``thresh`` is kept and, if fewer than
    ``min_kept`` are, the threshold is raised until the ``min_kept`` hardest pixels are. When the
    batch has ``min_kept`` scored pixels or fewer, all of them are kept (as in the official code).
    The loss is the (class-weighted) mean cross-entropy of the kept pixels; 0 if none.

    Args:
        ignore_index: label value that is never scored.
        thresh: probability threshold in (0, 1]; the paper used 0.7.
        min_kept: minimum number of pixels kept per batch (>= 0).
        weight: optional class weights ``(C,)``.
    """

    weight: torch.Tensor | None  # a buffer: moves with .to(), saved in the state dict

    def __init__(
        self,
        ignore_index: int = 255,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        weight: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < float(thresh) <= 1.0:
            raise LossConfigError(f"OhemCrossEntropy: thresh must be in (0, 1], got {thresh}")
        if int(min_kept) < 0:
            raise LossConfigError(f"OhemCrossEntropy: min_kept must be >= 0, got {min_kept}")
        self.ignore_index = int(ignore_index)
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.register_buffer("weight", _as_weight(weight))

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, thresh={self.thresh}, min_kept={self.min_kept}, "
            f"weighted={self.weight is not None}"
        )

    @torch.no_grad()
    def kept_mask(self, nll: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the pixels OHEM keeps, from the unweighted per-pixel NLL and the valid mask."""
        prob = torch.exp(-nll.detach())  # softmax probability of the true class
        threshold = torch.tensor(self.thresh, dtype=prob.dtype, device=prob.device)
        if self.min_kept > 0 and self.min_kept <= prob.numel():
            scored = torch.where(valid, prob, torch.ones_like(prob)).reshape(-1)  # ignored sort last
            kth = torch.kthvalue(scored, self.min_kept).values
            threshold = torch.maximum(threshold, kth.to(prob.device, prob.dtype))
        # min_kept scored pixels or fewer: keep them all. Decided on the device (no host sync per step).
        keep_all = valid.sum() <= self.min_kept
        return valid & (keep_all | (prob <= threshold))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, self.weight, type(self).__name__)
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        nll = F.cross_entropy(logits, safe, reduction="none")
        keep = self.kept_mask(nll, valid)
        return _weighted_mean(nll, safe, keep, self.weight)


class _BinnedLovasz(torch.autograd.Function):
    """Mean over present classes of the binned Lovász extension, from probabilities ``(C, pixels)``; see
    :class:`LovaszSoftmax`. The backward pass returns, per pixel and class, its bin's mean Jaccard rise with
    the sign of ``d e / d p`` (a table lookup), so no sort and no per-pixel autograd graph are kept."""

    @staticmethod
    def forward(ctx: Any, prob: torch.Tensor, labels: torch.Tensor, ignore_index: int, bins: int) -> torch.Tensor:
        classes = prob.shape[0]
        cls = torch.arange(classes, device=prob.device).unsqueeze(1)
        fg = labels.unsqueeze(0) == cls  # (C, pixels); False where ignored
        errors = torch.where(fg, 1.0 - prob, prob)
        # slot = ((class * bins + level) * 2 + fg) with level 0 for the largest errors (the first in the order);
        # ignored pixels go to one last slot that is dropped. Built in float32 (exact below 2**24), cast once.
        slot = torch.round(errors * -(bins - 1.0) + (bins - 1.0)).mul_(2.0).add_(fg).add_(cls * (2.0 * bins))
        slot = torch.where(labels.unsqueeze(0) != ignore_index, slot, float(classes * bins * 2)).long().reshape(-1)
        size = classes * bins * 2 + 1
        counts = torch.bincount(slot, minlength=size)[:-1].view(classes, bins, 2).double()
        fg_seen, bg_seen = counts[..., 1].cumsum(1), counts[..., 0].cumsum(1)
        gts = fg_seen[:, -1:]
        jaccard = 1.0 - (gts - fg_seen) / (gts + bg_seen).clamp_min(1.0)
        rise = torch.diff(jaccard, dim=1, prepend=torch.zeros_like(jaccard[:, :1]))
        present = gts > 0
        n_present = present.sum().clamp_min(1)
        weight = torch.where(present, rise / counts.sum(-1).clamp_min(1.0), 0.0) / n_present  # (C, bins)
        sums = torch.bincount(slot, weights=errors.reshape(-1).double(), minlength=size)[:-1].view(classes, bins, 2)
        ctx.save_for_backward(slot, weight)
        return (weight * sums.sum(-1)).sum().to(prob.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        slot, weight = ctx.saved_tensors
        signed = torch.stack((weight, -weight), dim=-1).reshape(-1)  # d e / d p: +1 background, -1 foreground
        table = torch.cat((signed, signed.new_zeros(1))).to(grad.dtype) * grad
        return table[slot].view(weight.shape[0], -1), None, None, None


class LovaszSoftmax(nn.Module):
    """Lovász-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018): a convex surrogate of ``1 - IoU``.

    Per class ``c``, with softmax probabilities ``p`` and errors ``e_i = |[y_i = c] - p_ic|`` over the scored
    pixels of the whole batch, the loss is the Lovász extension of the Jaccard loss at ``e``: the errors sorted
    in decreasing order, each times the increase of ``1 - IoU`` when its pixel joins the mispredicted set. It is
    averaged over the classes present in the batch's labels; on a hard (one-hot) prediction it equals the mean
    ``1 - IoU`` of those classes. 0 (attached to the graph) when no pixel is scored. Value in [0, 1].

    Instead of sorting ``C x pixels`` errors, they are binned into ``bins`` levels in [0, 1] and every pixel
    of a bin gets the bin's mean increase: the value differs from the sorted form by at most ``1 / (bins - 1)``
    and costs two ``bincount`` passes (linear in pixels; sorting a full-resolution CamVid batch takes seconds on
    one core). As in the sorted form, the increases are constants of the backward pass.
    """

    def __init__(self, ignore_index: int = 255, bins: int = 4096) -> None:
        super().__init__()
        if not 2 <= int(bins) <= 2**16:
            raise LossConfigError(f"LovaszSoftmax: bins must be in [2, 65536], got {bins}")
        self.ignore_index = int(ignore_index)
        self.bins = int(bins)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, bins={self.bins}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, target, None, type(self).__name__)
        if logits.shape[1] * self.bins * 2 >= 2**24:
            raise LossConfigError(
                f"LovaszSoftmax: {logits.shape[1]} classes x {self.bins} bins x 2 slots reach 2**24, beyond exact "
                "float32 slot numbers: use fewer bins"
            )
        prob = logits.float().softmax(1).transpose(0, 1).reshape(logits.shape[1], -1)  # (C, pixels)
        loss: torch.Tensor = _BinnedLovasz.apply(prob, target.reshape(-1), self.ignore_index, self.bins)
        return loss


class WithLovasz(nn.Module):
    """``base(logits, target) + lovasz_weight * LovaszSoftmax`` (the sum Berman et al. train with), the Lovász
    term on the pixels of a ``stride`` grid (rows and columns ``stride // 2, stride // 2 + stride, ...``): a
    uniform sample of each image's pixels, so the IoU it estimates is the batch's, at ``1 / stride**2`` of the
    cost (the base loss still sees every pixel). ``lovasz_weight > 0``, ``stride >= 1`` (1 = every pixel)."""

    def __init__(self, base: nn.Module, lovasz_weight: float, ignore_index: int = 255, stride: int = 1) -> None:
        super().__init__()
        if not float(lovasz_weight) > 0:
            raise LossConfigError(f"WithLovasz: lovasz_weight must be > 0, got {lovasz_weight}")
        if int(stride) < 1:
            raise LossConfigError(f"WithLovasz: stride must be >= 1, got {stride}")
        self.base = base
        self.lovasz = LovaszSoftmax(ignore_index=ignore_index)
        self.lovasz_weight = float(lovasz_weight)
        self.stride = int(stride)

    def extra_repr(self) -> str:
        return f"lovasz_weight={self.lovasz_weight}, stride={self.stride}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s, o = self.stride, self.stride // 2  # stride 1: offset 0, every pixel
        sampled = self.lovasz(logits[:, :, o::s, o::s], target[:, o::s, o::s])
        return self.base(logits, target) + self.lovasz_weight * sampled


def build_loss(
    name: str,
    ignore_index: int,
    weight: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    lovasz_weight: float = 0.0,
    lovasz_stride: int = 1,
    **kw: Any,
) -> nn.Module:
    """Loss by name: ``"ce"`` -> :class:`WeightedCrossEntropy`, ``"ohem"`` -> :class:`OhemCrossEntropy`
    (``kw``: ``thresh``, ``min_kept``), plus ``lovasz_weight`` (>= 0) times :class:`LovaszSoftmax` when that
    is > 0 (:class:`WithLovasz`, on a ``lovasz_stride`` pixel grid). Unknown names or arguments raise
    :class:`LossConfigError`."""
    key = str(name).lower()
    if not float(lovasz_weight) >= 0:
        raise LossConfigError(f"lovasz_weight must be >= 0, got {lovasz_weight}")
    base: nn.Module
    if key == "ce":
        if kw:
            raise LossConfigError(f"loss 'ce' takes no extra arguments, got {sorted(kw)}")
        base = WeightedCrossEntropy(weight=weight, ignore_index=ignore_index)
    elif key == "ohem":
        unknown = set(kw) - {"thresh", "min_kept"}
        if unknown:
            raise LossConfigError(f"loss 'ohem' accepts thresh and min_kept, got unknown {sorted(unknown)}")
        base = OhemCrossEntropy(ignore_index=ignore_index, weight=weight, **kw)
    else:
        raise LossConfigError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    if float(lovasz_weight) > 0:
        return WithLovasz(base, lovasz_weight, ignore_index, stride=lovasz_stride)
    return base
