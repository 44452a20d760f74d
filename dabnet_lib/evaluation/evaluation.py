"""Evaluation of a checkpoint on a split at full label resolution, and best-of-last selection over a run's epoch
checkpoints. The loop that scores a model (:func:`~dabnet_lib.training.validation.evaluate`) is the one training
validates with: confusion matrix, per-class IoU, mIoU (standard and the official code's), pixel accuracy, timings.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import SegmentationDataset, build_dataset
from ..devices import to_memory_format
from ..errors import CheckpointError
from ..model.dabnet import build_from_checkpoint
from ..paths import default_data_root
from ..training.validation import evaluate
from .inference import checkpoint_info, checkpoint_normalization

_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
SELECTION_NOTE = (
    "best of the last {k} epoch checkpoints, selected by mIoU on the '{split}' split itself: this "
    "number is optimistic (it tunes on the evaluated images), as the official test.py --best is"
)
# Heavier inputs than this are not cached in RAM for best_of_last (bytes).
_CACHE_LIMIT = 2 << 30


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    split: str = "test",
    dataset: str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 1,
    progress: bool = True,
    scale: float = 1.0,
    num_workers: int = 0,
    limit: int | None = None,
    data: SegmentationDataset | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint file on ``split`` of ``dataset`` (default: the checkpoint's own
    ``dataset`` key, else the dataset its class count fits) found at ``data_root`` (default
    ``data/<dataset>``), normalising with the checkpoint's ``mean``/``std`` (official files: the
    official mean). ``data`` reuses an already built split. Adds ``checkpoint``, ``epoch`` and
    ``normalization`` (where the mean came from) to :func:`evaluate`'s result.

    Raises :class:`CheckpointError` (unreadable file, class count of another dataset) or
    :class:`DatasetError` (missing data)."""
    model, ckpt = build_from_checkpoint(path)
    to_memory_format(model, torch.channels_last)  # oneDNN's and cuDNN's faster layout for inference
    info = checkpoint_info(ckpt, model.num_classes, str(path), dataset or (data.info.name if data else None))
    if data is None:
        root = Path(data_root) if data_root is not None else default_data_root(info.name)
        data = build_dataset(info.name, root, split)
    elif data.info.num_classes != model.num_classes:
        raise CheckpointError(
            f"checkpoint {path}: {model.num_classes} classes, dataset {data.info.name} has {data.info.num_classes}"
        )
    mean, std, source = checkpoint_normalization(ckpt, info)
    result = evaluate(
        model,
        data,
        device=device,
        batch_size=batch_size,
        progress=progress,
        scale=scale,
        num_workers=num_workers,
        mean=mean,
        std=std,
        limit=limit,
    )
    result.update(checkpoint=str(path), epoch=ckpt.get("epoch"), normalization=source)
    return result


def epoch_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``epoch_XXXX.pt`` in ``run_dir``, by epoch."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise CheckpointError(f"run folder {folder} does not exist: pass the --out folder of a training run")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found)


def best_of_last(
    run_dir: str | os.PathLike[str],
    k: int,
    split: str = "test",
    data_root: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 1,
    progress: bool = True,
    scale: float = 1.0,
    num_workers: int = 0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate the last ``k`` ``epoch_XXXX.pt`` checkpoints of ``run_dir`` on ``split`` and return
    the best one's result (by ``miou``) plus ``candidates`` [{checkpoint, epoch, miou,
    official_miou, pixel_accuracy}] and ``selection_note``: the choice is made on the evaluated
    split itself, so the number is optimistic (the official ``test.py --best`` does the same)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    found = epoch_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"run folder {run_dir} has no epoch_XXXX.pt checkpoints (train with save_every)")
    chosen = found[-k:]
    first, ckpt = build_from_checkpoint(chosen[0][1])
    info = checkpoint_info(ckpt, first.num_classes, str(chosen[0][1]), dataset)
    root = Path(data_root) if data_root is not None else default_data_root(info.name)
    data = build_dataset(info.name, root, split)
    h, w = info.native_size
    if len(chosen) > 1 and limit is None and len(data) * h * w * 4 <= _CACHE_LIMIT:
        data.cache_in_memory(progress=progress)  # decode once, evaluate k times
    results = [
        evaluate_checkpoint(
            path,
            split=split,
            dataset=info.name,
            device=device,
            batch_size=batch_size,
            progress=progress,
            scale=scale,
            num_workers=num_workers,
            limit=limit,
            data=data,
        )
        for _epoch, path in chosen
    ]
    candidates = [
        {
            "checkpoint": r["checkpoint"],
            "epoch": e,
            "miou": r["miou"],
            "official_miou": r["official_miou"],
            "pixel_accuracy": r["pixel_accuracy"],
        }
        for (e, _), r in zip(chosen, results, strict=True)
    ]
    best = max(range(len(results)), key=lambda i: -math.inf if math.isnan(results[i]["miou"]) else results[i]["miou"])
    out = dict(results[best])
    out.update(
        candidates=candidates,
        best_epoch=chosen[best][0],
        selection_note=SELECTION_NOTE.format(k=len(chosen), split=split),
    )
    return out


# --------------------------------------------------------------------------- reporting


def _num(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def result_to_json(result: dict[str, Any]) -> dict[str, Any]:
    """A JSON-serialisable copy of an evaluation result: ``iou`` becomes {class name: IoU or null}
    (the per-index list stays under ``iou_list``), ``confusion`` a nested list, NaN -> null."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key in ("iou", "iou_by_class"):
            continue
        if isinstance(value, np.ndarray):
            out[key] = (
                [[_num(v) for v in row] for row in value.tolist()]
                if value.ndim == 2
                else [_num(v) for v in value.tolist()]
            )
        elif isinstance(value, torch.Tensor):
            out[key] = value.tolist()
        elif isinstance(value, list):
            out[key] = [
                {k: _num(v) for k, v in item.items()} if isinstance(item, dict) else _num(item) for item in value
            ]
        else:
            out[key] = _num(value)
    out["iou"] = {name: _num(v) for name, v in result["iou_by_class"].items()}
    out["iou_list"] = [_num(v) for v in np.asarray(result["iou"], dtype=np.float64).tolist()]
    first = (
        "miou",
        "official_miou",
        "pixel_accuracy",
        "mean_accuracy",
        "iou",
        "dataset",
        "split",
        "images",
        "checkpoint",
        "epoch",
        "metric_share",
        "seconds",
    )
    ordered = {k: out[k] for k in first if k in out}
    ordered.update((k, v) for k, v in out.items() if k not in ordered and k != "confusion")
    ordered["confusion"] = out.get("confusion")
    return ordered


def format_result(result: dict[str, Any]) -> str:
    """A human-readable report: per-class IoU table, the summary metrics and the metric share."""
    from tabulate import tabulate

    rows = [(name, "-" if math.isnan(v) else f"{100 * v:.2f}") for name, v in result["iou_by_class"].items()]
    lines = [tabulate(rows, headers=("class", "IoU %"), tablefmt="github"), ""]

    def pct(value: float | None) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"

    lines += [
        f"mIoU            {pct(result['miou'])}  (all classes present in ground truth or prediction)",
        f"official mIoU   {pct(result['official_miou'])}  (official code: drops classes with zero intersection)",
        f"pixel accuracy  {pct(result['pixel_accuracy'])}",
        f"mean accuracy   {pct(result['mean_accuracy'])}",
        f"{result['images']} images of {result['dataset']}/{result['split']} at scale {result['scale']:g}, "
        f"batch {result['batch_size']}, {result['device']}: {result['seconds']:.1f} s, "
        f"metric updates {100 * result['metric_share']:.2f}% of the time",
    ]
    if result.get("checkpoint"):
        lines.append(
            f"checkpoint {result['checkpoint']} (epoch {result.get('epoch')}), "
            f"normalisation: {result.get('normalization')}"
        )
    if result.get("candidates"):
        lines.append("candidates: " + ", ".join(f"epoch {c['epoch']}: {pct(c['miou'])}" for c in result["candidates"]))
        lines.append(f"NOTE: {result['selection_note']}")
    return "\n".join(lines)
