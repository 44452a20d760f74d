"""Qualitative results (notebook 05): rank images by their own mIoU, pick best / median / worst."""

from __future__ import annotations

from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..data.datasets import SegmentationDataset
from ..evaluation.inference import Predictor
from ..training.metrics import ConfusionMatrix


def rank_images(predictor: Predictor, dataset: SegmentationDataset, progress: bool = True) -> pd.DataFrame:
    """One row per image, sorted by ``miou`` (fraction, standard rule) descending: ``index``, ``name``,
    ``miou``, ``pixel_accuracy``. Classes absent from both the image's label and prediction are not
    counted (NaN), so an image is not penalised for the classes it does not show."""
    info = dataset.info
    rows = []
    for i in tqdm(range(len(dataset)), desc=f"rank {dataset.split}", disable=not progress, unit="img"):
        image, label = dataset.load(i)
        cm = ConfusionMatrix(info.num_classes, info.ignore_index)
        cm.update(predictor.predict(image), label)
        scores = cm.compute()
        rows.append(
            {"index": i, "name": dataset.name(i), "miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"]}
        )
    table = pd.DataFrame(rows).sort_values("miou", ascending=False, kind="stable")
    return table.reset_index(drop=True)


def pick_examples(ranking: pd.DataFrame, per_group: int = 1) -> pd.DataFrame:
    """The ``per_group`` best, median and worst rows of a :func:`rank_images` table, with a ``group``
    column; an image is picked at most once (small splits)."""
    n = len(ranking)
    mid = n // 2
    groups = {
        "best": range(0, min(per_group, n)),
        "median": range(max(0, mid - per_group // 2), min(n, mid - per_group // 2 + per_group)),
        "worst": range(max(0, n - per_group), n),
    }
    picked: list[pd.DataFrame] = []
    seen: set[int] = set()
    for group, positions in groups.items():
        keep = [p for p in positions if p not in seen]
        seen.update(keep)
        picked.append(ranking.iloc[keep].assign(group=group))
    return pd.concat(picked, ignore_index=True)


def median_index(ranking: pd.DataFrame) -> int:
    """Dataset index of the median image of a :func:`rank_images` table (by per-image mIoU; the
    upper median for an even count): what the viewer opens on, a typical picture rather than the best."""
    if ranking.empty:
        raise ValueError("median_index: the ranking has no images")
    return int(ranking["index"].iloc[len(ranking) // 2])


def example_rows(predictor: Predictor, dataset: SegmentationDataset, picks: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows for :func:`dabnet_lib.workbook.visualize.sample_grid`: image, label, prediction and a title."""
    rows = []
    for _, pick in picks.iterrows():
        image, label = dataset.load(int(pick["index"]))
        rows.append(
            {
                "image": image,
                "label": label,
                "pred": predictor.predict(image),
                "title": f"{pick['group']}: {pick['name']} (mIoU {100 * pick['miou']:.1f}%)",
            }
        )
    return rows
