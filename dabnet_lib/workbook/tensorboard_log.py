"""TensorBoard event files for a training run (``dabnet train`` writes them into the run folder).

Tags (step = iteration): ``train/loss`` (mean of the applied steps since the last point),
``train/lr``, ``train/images_per_s``, ``train/skipped_steps`` (non-finite steps so far, this session)
every ``every`` iterations and at each epoch's end; ``epoch/loss``, ``epoch/images_per_s``, ``epoch/skipped_steps`` per
``metrics.jsonl`` row; ``val/miou``, ``val/pixel_accuracy``, ``val/iou/<class>`` (fractions 0..1)
and images ``val/example_<k>`` (photo | ground truth | prediction, palette colours) per validation;
the recipe as text (``recipe``). View them with ``make tensorboard`` (``tensorboard --logdir runs``).

Without the ``tensorboard`` package training runs as before and says once how to install it.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..data.colors import colorize
from ..data.datasets import get_info
from ..training.training_events import Examples, IterationInfo, TrainingCallback, kept_loss

INSTALL_HINT = "TensorBoard logging is off: `pip install tensorboard` (or `make setup`) turns it on"
_warned = False


def tensorboard_available() -> bool:
    """True when ``torch.utils.tensorboard`` can write event files (the ``tensorboard`` package is installed)."""
    try:
        importlib.import_module("torch.utils.tensorboard")  # raises ImportError without the tensorboard package
    except ImportError:
        return False
    return True


def example_panel(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette: np.ndarray, ignore_index: int, max_width: int = 720
) -> np.ndarray:
    """``uint8 (H, 3W, 3)`` RGB: photo | ground truth | prediction side by side, shrunk to ``max_width``."""
    panel = np.concatenate([image, colorize(label, palette, ignore_index), colorize(pred, palette, ignore_index)], 1)
    if panel.shape[1] > max_width:
        height = max(1, round(panel.shape[0] * max_width / panel.shape[1]))
        panel = cv2.resize(panel, (max_width, height), interpolation=cv2.INTER_AREA)
    return panel


class TensorBoardLogger(TrainingCallback):
    """A :mod:`~dabnet_lib.training.training_events` callback writing TensorBoard event files into ``log_dir``.

    The writer opens at the first event (so ranks other than 0, which get no events, write nothing)
    and purges the steps a resumed run repeats. ``every``: iterations between training points;
    ``examples``: validation images logged per validation (0 = none).
    """

    def __init__(
        self,
        log_dir: str | Path,
        recipe: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        every: int = 10,
        examples: int = 3,
    ) -> None:
        self.log_dir, self.recipe = Path(log_dir), dict(recipe or {})
        self.info = get_info(dataset or self.recipe.get("dataset", "camvid"))
        self.every, self.examples = max(1, int(every)), int(examples)
        self.writer: Any = None
        self._window_loss: torch.Tensor | None = None
        # applied and skipped steps: 0, then float64 tensors on the loss's device (summed without a host sync)
        self._window_steps: torch.Tensor | int = 0
        self.skipped: torch.Tensor | int = 0
        self._window_images = 0
        self._window_t = time.perf_counter()

    def _open(self, step: int) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step)
            if self.recipe:
                self.writer.add_text("recipe", "```\n" + json.dumps(self.recipe, indent=2) + "\n```", step)
        return self.writer

    def on_iteration(self, info: IterationInfo) -> None:
        w = self._open(info["iteration"])
        kept, applied = kept_loss(info)  # on the device: read on the host only when writing
        self._window_loss = kept if self._window_loss is None else self._window_loss + kept
        self._window_steps = self._window_steps + applied
        self.skipped = self.skipped + (1 - applied)
        self._window_images += info["images"]
        if info["iteration"] % self.every and info["iteration"] % info["iters_per_epoch"]:
            return  # a point every `every` iterations and at every epoch's end
        step, now = info["iteration"], time.perf_counter()
        steps = float(self._window_steps)
        if steps:
            w.add_scalar("train/loss", float(self._window_loss) / steps, step)
        w.add_scalar("train/lr", info["lr"], step)
        w.add_scalar("train/images_per_s", self._window_images / max(now - self._window_t, 1e-9), step)
        w.add_scalar("train/skipped_steps", int(self.skipped), step)
        self._window_loss, self._window_steps, self._window_images, self._window_t = None, 0, 0, now

    def on_epoch(self, row: Mapping[str, Any]) -> None:
        w, step = self._open(int(row["iteration"])), int(row["iteration"])
        for key, tag in (
            ("loss", "epoch/loss"),
            ("images_per_s", "epoch/images_per_s"),
            ("skipped_steps", "epoch/skipped_steps"),
        ):
            if row.get(key) is not None:
                w.add_scalar(tag, float(row[key]), step)

    def on_validation(self, row: Mapping[str, Any], examples: Examples) -> None:
        w, step = self._open(int(row["iteration"])), int(row["iteration"])
        w.add_scalar("val/miou", float(row["val_miou"]), step)
        if row.get("val_pixel_accuracy") is not None:
            w.add_scalar("val/pixel_accuracy", float(row["val_pixel_accuracy"]), step)
        for name, iou in (row.get("val_iou") or {}).items():
            if iou is not None:
                w.add_scalar(f"val/iou/{name}", float(iou), step)
        for k, ex in enumerate(examples(self.examples) if self.examples > 0 else []):
            panel = example_panel(ex.image, ex.label, ex.pred, self.info.palette, self.info.ignore_index)
            w.add_image(f"val/example_{k}", panel, step, dataformats="HWC")
        w.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def tensorboard_callbacks(log_dir: str | Path, recipe: Mapping[str, Any], log: Any = print) -> list[TensorBoardLogger]:
    """``[TensorBoardLogger(log_dir, recipe)]``, or ``[]`` with a one-time install hint (via ``log``)
    when the ``tensorboard`` package is missing."""
    global _warned
    if tensorboard_available():
        return [TensorBoardLogger(log_dir, recipe)]
    if not _warned:
        _warned = True
        log(INSTALL_HINT)
    return []
