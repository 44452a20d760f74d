"""Accuracy of optimised inference variants: mIoU on a labelled split against eager, same images.

The int8 target of the speed work is "at most 1.0 mIoU point below eager on CamVid val with a
trained checkpoint"; :func:`variant_miou` measures exactly that for any variant of
:mod:`dabnet_lib.deploy.inference_variants`, through the same :func:`~dabnet_lib.training.validation.evaluate` loop as
``dabnet test`` (full label size, single scale, no flip).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..data.datasets import build_dataset
from ..devices import to_memory_format
from ..model.dabnet import build_from_checkpoint
from ..training.validation import evaluate
from .inference_variants import optimize
from .profiling import calibration_images

#: The int8 target: largest acceptable mIoU drop (points) against eager.
INT8_MAX_MIOU_DROP = 1.0


class _AsModule(nn.Module):
    """A callable (N, 3, H, W) -> logits (N, C, H, W) presented as a module, so that
    :func:`evaluate` can run it (it has no parameters: ``.to``/``.eval`` are no-ops)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], num_classes: int) -> None:
        super().__init__()
        self.fn, self.num_classes = fn, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.contiguous())


def variant_miou(
    checkpoint: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    variants: Sequence[str] = ("int8",),
    split: str = "val",
    input_size: tuple[int, int] | None = None,
    calibration_count: int = 8,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """mIoU (%) of eager and of each of ``variants`` built from ``checkpoint``, on the first ``limit``
    (None: all) images of ``split``; int8 is calibrated on ``calibration_count`` *training* images.

    Every image of the split must have ``input_size`` (default: the first image's size; CamVid is
    360x480 throughout) since compiled/int8 graphs have a fixed input shape. Returns one row per
    model: variant, miou, drop (eager minus variant, points), images, split, build_s, parity; a
    variant that cannot be built gives a row with ``error``.
    """
    model, ckpt = build_from_checkpoint(checkpoint)
    to_memory_format(model.eval(), torch.channels_last)  # the layout evaluate() ran eager in, and the variants see
    mean, std = ckpt.get("mean"), ckpt.get("std")
    dataset = build_dataset(ckpt.get("dataset", "camvid"), data_root, split)
    if input_size is None:
        image, _ = dataset.load(0)
        input_size = (int(image.shape[0]), int(image.shape[1]))
    calibration = calibration_images(
        data_root, input_size, count=calibration_count, split="train", mean=mean, dataset=dataset.info.name
    )
    example = calibration[0]
    rows: list[dict[str, Any]] = []
    eager = evaluate(model, dataset, device="cpu", progress=False, mean=mean, std=std, limit=limit)
    base = 100 * eager["miou"]
    rows.append(
        {
            "variant": "eager",
            "miou": round(base, 2),
            "drop": 0.0,
            "images": eager["images"],
            "split": split,
            "build_s": None,
            "parity": "",
            "error": None,
        }
    )
    for name in variants:
        row: dict[str, Any] = {
            "variant": name,
            "miou": None,
            "drop": None,
            "images": None,
            "split": split,
            "build_s": None,
            "parity": "",
            "error": None,
        }
        rows.append(row)
        try:
            built = optimize(model, name, example_input=example, calibration=calibration)
        except Exception as exc:  # noqa: BLE001  (VariantError and anything a backend raises: one row)
            row["error"] = str(exc)
            continue
        result = evaluate(
            _AsModule(built, dataset.info.num_classes),
            dataset,
            device="cpu",
            progress=False,
            mean=mean,
            std=std,
            limit=limit,
        )
        score = 100 * result["miou"]
        row.update(
            miou=round(score, 2),
            drop=round(base - score, 2),
            images=result["images"],
            build_s=round(built.build_s, 1),
            parity=built.parity.get("text", ""),
        )
    return rows
