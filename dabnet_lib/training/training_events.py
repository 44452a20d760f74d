"""Progress events of :func:`dabnet_lib.training.engine.fit`, for TensorBoard, the notebook's live view and tests.

A callback is any object with some of these methods (all optional, see :class:`TrainingCallback`):

- ``on_iteration(info)`` after every optimisation step, ``info`` an :class:`IterationInfo` dict;
- ``on_epoch(row)`` with every row that ``metrics.jsonl`` gets (see :mod:`dabnet_lib.training.engine`);
- ``on_validation(row, examples)`` after a validation: ``row`` as above (``val_miou``, ``val_iou``, ...),
  ``examples(count)`` computes ``count`` :class:`Example` predictions of the current model on the
  validation split (only when called: a callback that shows no pictures costs nothing);
- ``close()`` once at the end of ``fit``, also when training fails or is interrupted.

Callbacks run on rank 0 only (DDP); the older ``on_iteration(iteration)`` / ``on_epoch(row)`` hooks of
``fit`` run on every rank, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypedDict

import numpy as np
import torch
from torch import nn

from ..data.transforms import EvalTransform
from .prediction import predict_classes


class IterationInfo(TypedDict):
    """What ``on_iteration`` receives after each optimisation step.

    ``loss`` is the step's loss as a 0-dim tensor on the training device (convert with ``float()``
    only when you show it: on CUDA that waits for the GPU); ``applied`` is False for a step skipped
    for a non-finite loss or gradient (a 0-dim bool tensor on the device where the host reads step flags
    only every few iterations: :func:`kept_loss` handles both); ``images`` the step's images over all
    processes; ``elapsed_s`` the training wall time before this step (seconds, resumed sessions
    included); ``budget_s`` the wall-time budget or None; ``total_iters`` the iteration budget.
    """

    iteration: int
    total_iters: int
    epoch: int
    iters_per_epoch: int
    loss: torch.Tensor
    applied: bool | torch.Tensor
    lr: float
    images: int
    elapsed_s: float
    budget_s: float | None


def kept_loss(info: IterationInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss if the step was applied else 0, 1 if applied else 0)`` as float64 tensors on the loss's
    device: callbacks sum these without a host sync, also when ``applied`` is a device flag (CUDA)."""
    loss = info["loss"].detach().double()
    ok = torch.as_tensor(info["applied"], device=loss.device)
    return torch.where(ok, loss, torch.zeros_like(loss)), ok.double()


class Example(NamedTuple):
    """One validation picture: ``image`` uint8 (H, W, 3) RGB, ``label`` and ``pred`` (H, W) class ids."""

    name: str
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray


Examples = Callable[[int], list[Example]]


class TrainingCallback:
    """Base class with no-op methods (subclassing is optional: any object with some of them works)."""

    def on_iteration(self, info: IterationInfo) -> None:
        """After each optimisation step."""

    def on_epoch(self, row: Mapping[str, Any]) -> None:
        """With each ``metrics.jsonl`` row (end of an epoch, or of a partial epoch at a budget's end)."""

    def on_validation(self, row: Mapping[str, Any], examples: Examples) -> None:
        """After a validation (``row['val_miou']`` is set)."""

    def close(self) -> None:
        """Once at the end of ``fit``."""


class TrainingEvents:
    """Fans the trainer's events out to ``callbacks`` (rank 0 only) and the legacy per-rank hooks."""

    def __init__(
        self,
        callbacks: Sequence[Any],
        is_main: bool,
        on_iteration: Callable[[int], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.callbacks = list(callbacks) if is_main else []
        self.legacy_iteration, self.legacy_epoch = on_iteration, on_epoch

    def _call(self, method: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, method, None)
            if fn is not None:
                fn(*args)

    def iteration(self, info: IterationInfo) -> None:
        if self.legacy_iteration is not None:
            self.legacy_iteration(info["iteration"])
        self._call("on_iteration", info)

    def epoch(self, row: dict[str, Any], examples: Examples) -> None:
        if self.legacy_epoch is not None:
            self.legacy_epoch(row)
        self._call("on_epoch", row)
        if row.get("val_miou") is not None:
            self._call("on_validation", row, examples)


def close_callbacks(callbacks: Sequence[Any]) -> None:
    """Call every callback's ``close()`` (all of them, even when one raises; the first error is re-raised)."""
    error: BaseException | None = None
    for cb in callbacks:
        fn = getattr(cb, "close", None)
        if fn is None:
            continue
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (close the others first)
            error = error or exc
    if error is not None:
        raise error


@torch.inference_mode()
def predict_examples(
    net: nn.Module,
    dataset: Any,
    count: int,
    mean: Sequence[float],
    std: Sequence[float] | None,
    device: torch.device,
    scale: float = 1.0,
) -> list[Example]:
    """Predictions of ``net`` for the first ``count`` images of ``dataset`` (evenly spread over it),
    pre-processed as validation does; the net's train/eval mode is restored afterwards."""
    n = len(dataset)
    indices = sorted({int(i) for i in np.linspace(0, n - 1, num=min(count, n))}) if n else []
    transform = EvalTransform(mean, std, scale=scale)
    was_training = net.training
    net.eval()
    try:
        out = []
        for i in indices:
            image, label = dataset.load(i)
            pred = predict_classes(net, [image], transform, device)[0]
            out.append(Example(str(dataset.name(i)), image, label, pred.cpu().numpy()))
        return out
    finally:
        net.train(was_training)
