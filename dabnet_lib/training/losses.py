"""Training losses: class-weighted cross-entropy and OHEM cross-entropy, both with an ignore index.

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


def build_loss(
    name: str,
    ignore_index: int,
    weight: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    **kw: Any,
) -> nn.Module:
    """Loss by name: ``"ce"`` -> :class:`WeightedCrossEntropy`, ``"ohem"`` -> :class:`OhemCrossEntropy`
    (``kw``: ``thresh``, ``min_kept``). Unknown names or arguments raise :class:`LossConfigError`."""
    key = str(name).lower()
    if key == "ce":
        if kw:
            raise LossConfigError(f"loss 'ce' takes no extra arguments, got {sorted(kw)}")
        return WeightedCrossEntropy(weight=weight, ignore_index=ignore_index)
    if key == "ohem":
        unknown = set(kw) - {"thresh", "min_kept"}
        if unknown:
            raise LossConfigError(f"loss 'ohem' accepts thresh and min_kept, got unknown {sorted(unknown)}")
        return OhemCrossEntropy(ignore_index=ignore_index, weight=weight, **kw)
    raise LossConfigError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
