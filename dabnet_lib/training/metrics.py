"""Segmentation metrics from a vectorised confusion matrix.

:class:`ConfusionMatrix` accumulates an ``int64 (C, C)`` matrix (rows = ground truth, columns =
prediction) with one ``torch.bincount`` per update, on the device of the tensors it is given, so a
GPU evaluation loop never copies predictions to the host. ``update`` checks its input;
``update_unchecked`` is the evaluation loop's path (three passes over the pixels instead of about 13).
``compute()`` turns the counts into per-class IoU, mIoU (two rules, see below), pixel accuracy and mean
class accuracy. All values are fractions in [0, 1], never percentages.

Two mIoU rules are reported side by side:

- ``miou``: mean IoU over the classes present in the ground truth or the prediction (a class absent
  from both has IoU NaN and is left out).
- ``official_miou``: the rule of the official DABNet evaluation code: mean over the classes whose
  intersection (true positives) is non-zero. It drops classes with IoU 0 too, so it is ``>= miou``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DabnetError, DatasetError

ArrayLike = torch.Tensor | np.ndarray


class MetricInputError(DabnetError, ValueError):
    """Predictions or labels that cannot be scored (shape mismatch, class ids out of range)."""


def _as_tensor(x: ArrayLike | Any, what: str) -> torch.Tensor:
    """Integer tensor view of ``x`` (torch tensors keep their device; numpy goes to CPU)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise MetricInputError(
                f"ConfusionMatrix.update: {what} must hold integer class ids, got dtype {x.dtype}"
                + (" (pass logits.argmax(1), not the logits)" if what == "pred" else "")
            )
        return x
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise MetricInputError(
            f"ConfusionMatrix.update: {what} must hold integer class ids, got numpy dtype {arr.dtype}"
        )
    # int64, contiguous, writable (torch supports neither wide unsigned types nor read-only arrays).
    out = arr.astype(np.int64, order="C", copy=False)
    return torch.from_numpy(out if out.flags.writeable else out.copy())


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` confusion matrix over any number of ``update`` calls.

    Args:
        num_classes: C, the number of real classes (ids ``0 .. C-1``).
        ignore_index: label value that is not scored (e.g. 11 for CamVid, 255 for Cityscapes);
            ``None`` scores every pixel.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if int(num_classes) < 1:
            raise MetricInputError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        # update_unchecked's counts, (ignore_index + 1) * C bins (rows = label values), not yet in _matrix
        self._unchecked: torch.Tensor | None = None

    @classmethod
    def from_counts(
        cls, counts: ArrayLike, ignore_index: int | None = 255, device: str | torch.device | None = None
    ) -> ConfusionMatrix:
        """A matrix holding ``counts`` (int64 (C, C), rows = ground truth, e.g. one DDP rank's ``compute()``
        ``confusion`` to :meth:`all_reduce`) on ``device``; a CPU numpy array is used in place, not copied."""
        matrix = torch.as_tensor(counts, dtype=torch.int64, device=device)
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise MetricInputError(f"ConfusionMatrix.from_counts: counts must be (C, C), got {tuple(matrix.shape)}")
        cm = cls(matrix.shape[0], ignore_index)
        cm._matrix = matrix
        return cm

    @property
    def matrix(self) -> torch.Tensor:
        """The int64 (C, C) counts (rows = ground truth, columns = prediction), on the device counted on."""
        self._fold_unchecked()
        return self._matrix

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.matrix.sum())})"
        )

    def reset(self) -> None:
        """Zero the matrix (keeps its device)."""
        self._unchecked = None
        self._matrix.zero_()

    @torch.no_grad()
    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add one batch: ``pred`` and ``target`` integer class ids of identical shape (any rank).

        Pixels whose target equals ``ignore_index`` are skipped. A target value outside
        ``[0, C)`` (and not the ignore index) or a prediction outside ``[0, C)`` raises
        :class:`MetricInputError`. Torch tensors are counted on their own device (target is moved
        to the prediction's device when they differ); numpy arrays are counted on the CPU.
        """
        p = _as_tensor(pred, "pred")
        t = _as_tensor(target, "target")
        if tuple(p.shape) != tuple(t.shape):
            raise MetricInputError(
                f"ConfusionMatrix.update: pred shape {tuple(p.shape)} != target shape {tuple(t.shape)}"
                " (pred must be class ids of the label's shape, e.g. logits.argmax(1))"
            )
        if t.device != p.device:
            t = t.to(p.device, non_blocking=True)
        c = self.num_classes
        p = p.reshape(-1).long()
        t = t.reshape(-1).long()
        valid = torch.ones_like(t, dtype=torch.bool) if self.ignore_index is None else t != self.ignore_index
        in_range = (p >= 0) & (p < c) & (t >= 0) & (t < c)
        # Bin layout: c*c real cells, then one bin for ignored pixels, one for invalid values.
        index = torch.where(in_range, t * c + p, c * c + 1)
        index = torch.where(valid, index, c * c)
        counts = torch.bincount(index, minlength=c * c + 2)
        if int(counts[c * c + 1]) > 0:  # one cheap host sync; the error path below is rare
            self._raise_out_of_range(p, t, valid)
        self._add(counts[: c * c].view(c, c))

    def _add(self, cells: torch.Tensor) -> None:
        """Add (C, C) counts; an empty matrix moves to their device, a filled one keeps its own."""
        if self._matrix.device != cells.device:
            if int(self._matrix.sum()) == 0:
                self._matrix = self._matrix.to(cells.device)
            else:
                cells = cells.to(self._matrix.device)
        self._matrix += cells

    @torch.no_grad()
    def update_unchecked(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """:meth:`update` for an evaluation loop: ``pred`` int64 class ids in ``[0, C)`` (an argmax) and
        ``target`` int64 labels of the same shape on the same device. Three passes over the pixels (``pred +
        C * target`` fused, one ``bincount``) instead of update's range checks: predictions are not checked,
        and a label that is neither a class nor the ignore index raises :class:`~dabnet_lib.errors.DatasetError`
        here (above the ignore index) or when the matrix is next read (in between: it counts in a row of its
        own). With no ignore index, or one inside ``[0, C)``, this is :meth:`update`."""
        c, ignore = self.num_classes, self.ignore_index
        if ignore is None or ignore < c:
            self.update(pred, target)
            return
        bins = (ignore + 1) * c
        counts = torch.bincount(torch.add(pred, target, alpha=c).reshape(-1), minlength=bins)
        if counts.numel() > bins:  # a label above the ignore index (the size is known on the host)
            raise DatasetError(
                f"label value {int(target.max())} is neither a class (0..{c - 1}) nor the ignore index {ignore}"
            )
        self._unchecked = counts if self._unchecked is None else self._unchecked.add_(counts)

    def _fold_unchecked(self) -> None:
        """Move update_unchecked's counts into the matrix; DatasetError if labels held stray values."""
        if self._unchecked is None:
            return
        c, ignore = self.num_classes, self.ignore_index
        assert ignore is not None
        table = self._unchecked.view(ignore + 1, c)
        stray = [row for row in range(c, ignore) if int(table[row].sum()) > 0] if ignore > c else []
        if stray:
            raise DatasetError(
                f"label values {stray[:10]} are neither classes (0..{c - 1}) nor the ignore index {ignore}"
            )
        self._unchecked = None
        self._add(table[:c])

    def _raise_out_of_range(self, p: torch.Tensor, t: torch.Tensor, valid: torch.Tensor) -> None:
        c = self.num_classes
        bad_t = torch.unique(t[valid & ((t < 0) | (t >= c))]).cpu().tolist()
        bad_p = torch.unique(p[valid & ((p < 0) | (p >= c))]).cpu().tolist()
        parts = []
        if bad_t:
            parts.append(
                f"target values {bad_t[:10]} are outside [0, {c}) and not the ignore index {self.ignore_index}"
            )
        if bad_p:
            parts.append(f"prediction values {bad_p[:10]} are outside [0, {c})")
        raise MetricInputError(
            "ConfusionMatrix.update: "
            + "; ".join(parts)
            + f" (num_classes={c}: check the model's class count and the dataset's ignore index)"
        )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (same C and ignore index); returns ``self``."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"ConfusionMatrix.merge expects a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise MetricInputError(
                "ConfusionMatrix.merge: cannot merge "
                f"(num_classes={other.num_classes}, ignore_index={other.ignore_index}) into "
                f"(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
            )
        self._add(other.matrix.to(self.matrix.device))
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all DDP ranks in place (no-op unless torch.distributed is initialised).

        With the NCCL backend the matrix must already be on the rank's CUDA device (it is, once
        ``update`` was called with CUDA tensors). Returns ``self``.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if dist.get_backend() == "nccl" and self.matrix.device.type != "cuda":
                self._matrix = self._matrix.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(self._matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics of the accumulated counts.

        Returns a dict with ``confusion`` (np.int64 (C, C), rows = ground truth), ``iou`` (np.float64
        (C,), NaN where a class is absent from both target and prediction), ``miou`` (nanmean of
        ``iou``), ``official_miou`` (mean over classes with non-zero intersection), ``pixel_accuracy``,
        ``class_accuracy`` ((C,), NaN where a class is absent from the target), ``mean_accuracy``
        (nanmean of it) and ``num_pixels`` (scored pixels). Scalars are floats in [0, 1]; NaN when
        nothing was scored.
        """
        confusion = self.matrix.detach().cpu().numpy().astype(np.int64)
        cm = confusion.astype(np.float64)
        tp = np.diag(cm)
        gt = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        union = gt + predicted - tp
        total = cm.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            class_acc = np.where(gt > 0, tp / gt, np.nan)
        return {
            "confusion": confusion,
            "iou": iou,
            "miou": _nanmean(iou),
            "official_miou": float(iou[tp > 0].mean()) if (tp > 0).any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
            "class_accuracy": class_acc,
            "mean_accuracy": _nanmean(class_acc),
            "num_pixels": int(total),
        }


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")
