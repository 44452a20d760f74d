"""Validation: a model scored on a split at full label resolution (confusion matrix, per-class IoU, mIoU
standard and the official code's, pixel accuracy, timings with the share spent in metric updates), as
training runs it after its epochs and as evaluation/ runs it on a checkpoint.

The forward pass is :mod:`~dabnet_lib.training.prediction`'s (logits upsampled to the label size, argmax), as
for prediction. The metric stays on the model's device: one fused ``pred + C * label`` and one ``bincount`` per
batch (:meth:`~dabnet_lib.training.metrics.ConfusionMatrix.update_unchecked`); the metrics themselves come from
:meth:`~dabnet_lib.training.metrics.ConfusionMatrix.compute`. Evaluation is bound by the model, not by the
metric (the official code looped over pixels in Python).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.datasets import SegmentationDataset
from ..data.transforms import EvalTransform
from ..devices import resolve_device
from ..errors import DatasetError
from .metrics import ConfusionMatrix
from .prediction import class_argmax, full_size_logits


class _EvalView(Dataset):
    """``(image tensor (3, h, w), label int64 (H, W), name)`` for the first ``count`` samples."""

    def __init__(self, dataset: SegmentationDataset, transform: EvalTransform, count: int) -> None:
        self.dataset, self.transform, self.count = dataset, transform, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, label = self.dataset.load(i)
        if label is None:
            raise DatasetError(f"{self.dataset.name(i)} in split {self.dataset.split} has no label to evaluate on")
        x, y = self.transform(image, label)
        return x, torch.as_tensor(y, dtype=torch.int64), self.dataset.name(i)


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = {tuple(x.shape) + tuple(y.shape) for x, y, _ in batch}
    if len(shapes) != 1:
        names = ", ".join(f"{n} {tuple(y.shape)}" for _, y, n in batch)
        raise DatasetError(f"batch_size > 1 needs same-size images, got {names}: use batch size 1")
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """The memory format of ``model``'s convolution weights: channels_last when its first 4-D parameter
    with a spatial extent is stored NHWC, else contiguous (NCHW; also for a model without such weights)."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[-2] * p.shape[-1] > 1:
            return (
                torch.channels_last
                if not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
    return torch.contiguous_format


def _device_of(model: nn.Module) -> torch.device | None:
    """The device of ``model``'s first parameter or buffer (None when it has neither)."""
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    model: nn.Module,
    dataset: SegmentationDataset,
    device: str | torch.device = "auto",
    batch_size: int = 1,
    progress: bool = True,
    scale: float = 1.0,
    num_workers: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on every image of ``dataset`` (or its first ``limit``) at full label size.

    Normalisation: ``mean`` (RGB, 0..255) defaults to ``dataset.info.official_mean`` and ``std`` to
    None (mean subtraction only, as the official code); pass the checkpoint's ``mean``/``std`` (what
    :func:`evaluate_checkpoint` does) or ``statistics(...)`` values (:mod:`dabnet_lib.data.statistics`) to override.
    ``scale != 1`` resizes the image only; logits are upsampled bilinearly to the label size before
    the argmax. ``batch_size > 1`` needs same-size images. The model runs on ``device`` in eval mode
    under ``torch.inference_mode``, in its own memory format (inputs follow it), and is left as it was
    found: its device, memory format and train/eval mode are restored (validation inside training must
    not change the training model; :func:`evaluate_checkpoint` puts its own model in channels_last).

    Returns :meth:`ConfusionMatrix.compute` (``iou``, ``miou``, ``official_miou``, ``pixel_accuracy``,
    ``mean_accuracy``, ``confusion``) plus ``iou_by_class`` {class name: IoU or NaN}, ``images``,
    ``split``, ``dataset``, ``scale``, ``batch_size``, ``device``, ``mean``, ``std``, ``seconds``
    (wall time of the loop), ``forward_seconds`` (model + upsampling), ``metric_seconds`` (argmax +
    confusion update) and ``metric_share`` = metric_seconds / seconds.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    info = dataset.info
    count = len(dataset) if limit is None else min(len(dataset), max(0, int(limit)))
    if count == 0:
        raise DatasetError(f"split {dataset.split} of {info.name} at {dataset.root} holds no images to evaluate")
    if not getattr(dataset, "has_labels", True):
        raise DatasetError(
            f"split {dataset.split} of {info.name} at {dataset.root} has no label files to evaluate on "
            "(Cityscapes test labels are withheld: use `dabnet predict --cityscapes-submission`)"
        )
    mean_t = tuple(float(v) for v in (mean if mean is not None else info.official_mean))
    std_t = tuple(float(v) for v in std) if std is not None else None
    dev = resolve_device(device)
    n_out = getattr(model, "num_classes", None)
    if n_out is not None and n_out != info.num_classes:
        raise ValueError(f"model has {n_out} classes but {info.name} has {info.num_classes}")

    view = _EvalView(dataset, EvalTransform(mean_t, std_t, scale=scale), count)
    loader = DataLoader(
        view,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
    )
    was_training, home, mf = model.training, _device_of(model), memory_format_of(model)
    model.to(dev).eval()  # .to(device) keeps every tensor's strides
    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    forward_s = metric_s = 0.0
    images = 0
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            bar = tqdm(
                loader, total=len(loader), desc=f"eval {info.name}/{dataset.split}", unit="batch", disable=not progress
            )
            for x, y in bar:
                x = x.to(dev, non_blocking=True).contiguous(memory_format=mf)
                y = y.to(dev, non_blocking=True)
                _sync(dev)
                t0 = time.perf_counter()
                logits = full_size_logits(model, x, y.shape[-2:])
                if logits.shape[1] != info.num_classes:
                    raise ValueError(f"model outputs {logits.shape[1]} classes, {info.name} has {info.num_classes}")
                _sync(dev)
                t1 = time.perf_counter()
                cm.update_unchecked(class_argmax(logits), y)
                _sync(dev)
                t2 = time.perf_counter()
                forward_s += t1 - t0
                metric_s += t2 - t1
                images += x.shape[0]
    finally:
        model.train(was_training)
        if home is not None and home != dev:
            model.to(home)
    seconds = time.perf_counter() - start
    result = dict(cm.compute())
    iou = np.asarray(result["iou"], dtype=np.float64)
    result.update(
        iou_by_class={name: float(v) for name, v in zip(info.classes, iou, strict=True)},
        images=images,
        split=dataset.split,
        dataset=info.name,
        scale=float(scale),
        batch_size=int(batch_size),
        device=str(dev),
        mean=list(mean_t),
        std=list(std_t) if std_t is not None else None,
        seconds=seconds,
        forward_seconds=forward_s,
        metric_seconds=metric_s,
        metric_share=metric_s / seconds if seconds > 0 else 0.0,
    )
    return result
