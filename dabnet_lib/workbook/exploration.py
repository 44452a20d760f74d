"""Data exploration tables and plots (notebook 01): split sizes, class frequencies, class presence."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..data.datasets import SPLITS, DatasetInfo, SegmentationDataset, build_dataset


def split_summary(dataset: str, root: str | Path) -> pd.DataFrame:
    """One row per split: ``split``, ``images``, ``labelled`` (bool), ``image_sizes`` ("HxW: count").

    Sizes are read from the PNG headers only (cheap)."""
    rows = []
    for split in SPLITS:
        ds = build_dataset(dataset, root, split)
        sizes: Counter[str] = Counter()
        for image_path, _ in ds.samples:
            h, w = _png_size(image_path)
            sizes[f"{h}x{w}"] += 1
        rows.append(
            {
                "split": split,
                "images": len(ds),
                "labelled": ds.has_labels,
                "image_sizes": ", ".join(f"{s}: {n}" for s, n in sizes.most_common()),
            }
        )
    return pd.DataFrame(rows)


def _png_size(path: Path) -> tuple[int, int]:
    """(H, W) of a PNG from its IHDR chunk; falls back to decoding for other formats."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return (0, 0) if image is None else image.shape[:2]


def class_table(stats: dict, info: DatasetInfo) -> pd.DataFrame:
    """Per class: pixel ``frequency`` (fraction of labelled pixels) and ``weight`` = 1/ln(1.10 + p)."""
    return pd.DataFrame(
        {
            "class": list(info.classes),
            "pixels": stats["class_counts"],
            "frequency": stats["class_frequencies"],
            "weight": stats["class_weights"],
        }
    )


def class_presence(dataset: SegmentationDataset, progress: bool = True) -> pd.DataFrame:
    """Boolean table, one row per image (index = file stem), one column per class: class present."""
    info = dataset.info
    rows = np.zeros((len(dataset), info.num_classes), dtype=bool)
    for i in tqdm(range(len(dataset)), desc=f"presence {dataset.split}", disable=not progress, unit="img"):
        _, label = dataset.load(i)
        counts = np.bincount(label.ravel(), minlength=max(256, info.ignore_index + 1))
        rows[i] = counts[: info.num_classes] > 0
    return pd.DataFrame(rows, index=[dataset.name(i) for i in range(len(dataset))], columns=list(info.classes))


def plot_class_frequencies(table: pd.DataFrame, info: DatasetInfo) -> Figure:
    """Bar chart of class pixel frequencies (log scale) coloured with the dataset palette, with weights."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.add_subplot()
    colors = info.palette[: info.num_classes] / 255.0
    bars = ax.bar(table["class"], table["frequency"], color=colors, edgecolor="black", linewidth=0.5)
    ax.set_yscale("log")
    ax.set_ylabel("fraction of labelled pixels (log)")
    ax.set_title(f"{info.name}: class pixel frequencies (labels above bars: class weight 1/ln(1.10+p))")
    for bar, weight in zip(bars, table["weight"], strict=True):
        ax.annotate(
            f"{weight:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
        )
    ax.tick_params(axis="x", rotation=45)
    return fig


def sample_rows(dataset: SegmentationDataset, count: int = 6, seed: int = 0) -> list[dict]:
    """``count`` random (seeded) samples as rows for :func:`dabnet_lib.workbook.visualize.sample_grid`."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
    rows = []
    for i in sorted(int(p) for p in picks):
        image, label = dataset.load(i)
        rows.append({"image": image, "label": label, "pred": None, "title": dataset.name(i)})
    return rows
