"""Pictures of labels, predictions and training runs (pure numpy / matplotlib, no widgets).

Colours come from the :class:`~dabnet_lib.data.datasets.DatasetInfo` passed in: ``palette`` is
``(C+1, 3) uint8`` RGB, row ``c`` for class ``c`` and the last row for the ignore/void label.
Images are ``uint8 (H, W, 3)`` RGB; labels and predictions are integer ``(H, W)`` class ids.
Figures are returned already closed in pyplot (they never pile up in loops, and a notebook shows
one only when it is the cell's value or passed to ``display``): ``fig.savefig(path)`` or
``IPython.display.display(fig)``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..errors import DabnetError

# Error-map colours (RGB): correct pixels, wrong pixels, ignored (unlabelled) pixels.
ERROR_CORRECT = np.array([0, 170, 0], dtype=np.uint8)
ERROR_WRONG = np.array([230, 25, 25], dtype=np.uint8)
ERROR_IGNORED = np.array([0, 0, 0], dtype=np.uint8)

GRID_COLUMNS = ("image", "ground truth", "prediction", "error")


class VisualizeError(DabnetError, ValueError):
    """Inputs that cannot be drawn (wrong shapes, ids outside the palette)."""


class InfoLike(Protocol):
    """What this module needs from a DatasetInfo."""

    classes: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int

    @property
    def num_classes(self) -> int: ...


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure (so Jupyter's inline backend knows how to draw it) that pyplot no longer tracks."""
    fig = plt.figure(figsize=figsize, layout="constrained")
    plt.close(fig)
    return fig


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(label: Any, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """Colour image ``uint8 (H, W, 3)`` of a label map ``(H, W)`` of ids in ``[0, C)`` or ``ignore_index``.

    ``palette`` is ``(C+1, 3)``; class ``c`` gets ``palette[c]``, ignored pixels ``palette[-1]``.
    Any other value raises :class:`VisualizeError`.
    """
    lab = _to_numpy(label)
    pal = np.asarray(palette, dtype=np.uint8)
    if lab.ndim != 2:
        raise VisualizeError(f"colorize: label must be (H, W), got shape {lab.shape}")
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < 2:
        raise VisualizeError(f"colorize: palette must be (C+1, 3), got shape {pal.shape}")
    c = pal.shape[0] - 1
    idx = lab.astype(np.int64)
    idx = np.where(idx == ignore_index, c, idx)
    bad = (idx < 0) | (idx > c) | ((idx == c) & (lab.astype(np.int64) != ignore_index))
    if bad.any():
        values = np.unique(lab[bad])[:10].tolist()
        raise VisualizeError(
            f"colorize: label values {values} are neither classes 0..{c - 1} nor the ignore index {ignore_index}"
        )
    return pal[idx]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Blend ``(1 - alpha) * image + alpha * color`` -> ``uint8 (H, W, 3)``.

    ``alpha`` in [0, 1]: a number, or an ``(H, W)`` array for a per-pixel opacity.
    """
    img = _to_numpy(image)
    col = _to_numpy(color)
    if img.shape != col.shape or img.ndim != 3 or img.shape[2] != 3:
        raise VisualizeError(f"overlay: image {img.shape} and color {col.shape} must both be (H, W, 3)")
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        if a.shape != img.shape[:2]:
            raise VisualizeError(f"overlay: alpha map {a.shape} does not match image {img.shape[:2]}")
        a = a[..., None]
    elif a.ndim != 0:
        raise VisualizeError(f"overlay: alpha must be a number or an (H, W) map, got shape {a.shape}")
    if np.any(a < 0) or np.any(a > 1):
        raise VisualizeError("overlay: alpha must lie in [0, 1]")
    out = img.astype(np.float32) * (1.0 - a) + col.astype(np.float32) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def error_map(pred: Any, label: Any, ignore_index: int) -> np.ndarray:
    """``uint8 (H, W, 3)``: :data:`ERROR_CORRECT` where ``pred == label``, :data:`ERROR_WRONG` where
    they differ, :data:`ERROR_IGNORED` where the label is ``ignore_index``."""
    p = _to_numpy(pred)
    lab = _to_numpy(label)
    if p.shape != lab.shape or p.ndim != 2:
        raise VisualizeError(f"error_map: pred {p.shape} and label {lab.shape} must both be the same (H, W)")
    out = np.empty(p.shape + (3,), dtype=np.uint8)
    ignored = lab.astype(np.int64) == ignore_index
    correct = (p.astype(np.int64) == lab.astype(np.int64)) & ~ignored
    out[:] = ERROR_WRONG
    out[correct] = ERROR_CORRECT
    out[ignored] = ERROR_IGNORED
    return out


def legend_handles(classes: Sequence[str], palette: np.ndarray, ignore_name: str | None = None) -> list[Patch]:
    """One matplotlib ``Patch`` per class (colour ``palette[c]``), plus one for the ignore colour
    (``palette[-1]``) when ``ignore_name`` is given. Use with ``ax.legend(handles=...)``."""
    pal = np.asarray(palette, dtype=np.uint8)
    if pal.shape[0] < len(classes):
        raise VisualizeError(f"legend_handles: palette has {pal.shape[0]} colours for {len(classes)} classes")
    handles = [Patch(facecolor=pal[i] / 255.0, edgecolor="black", linewidth=0.3, label=str(n)) for i, n in enumerate(classes)]
    if ignore_name is not None:
        handles.append(Patch(facecolor=pal[-1] / 255.0, edgecolor="black", linewidth=0.3, label=ignore_name))
    return handles


def sample_grid(rows: Sequence[Mapping[str, Any]], info: InfoLike, columns: Sequence[str] = GRID_COLUMNS) -> Figure:
    """Grid figure, one row per sample and one column per view (default image / ground truth /
    prediction / error), with a class legend below.

    Each row is a dict with ``image`` (uint8 HWC RGB) and optionally ``label``, ``pred`` ((H, W) ids)
    and ``title``; a view whose input is missing shows "n/a".
    """
    if not rows:
        raise VisualizeError("sample_grid: no rows to draw")
    unknown = [c for c in columns if c not in GRID_COLUMNS]
    if unknown:
        raise VisualizeError(f"sample_grid: unknown columns {unknown}; choose from {GRID_COLUMNS}")
    h, w = _to_numpy(rows[0]["image"]).shape[:2]
    cell = 3.0
    fig = _new_figure((cell * len(columns) * w / max(h, w) + 0.4, cell * len(rows) * h / max(h, w) + 1.2))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        image = _to_numpy(row["image"])
        label = row.get("label")
        pred = row.get("pred")
        views = {
            "image": image,
            "ground truth": None if label is None else colorize(label, info.palette, info.ignore_index),
            "prediction": None if pred is None else colorize(pred, info.palette, info.ignore_index),
            "error": None if pred is None or label is None else error_map(pred, label, info.ignore_index),
        }
        for c, col in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if views[col] is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(views[col])
            if r == 0:
                ax.set_title(col)
            if c == 0 and row.get("title"):
                ax.set_ylabel(str(row["title"]), fontsize=8)
    handles = legend_handles(info.classes, info.palette, ignore_name="ignore")
    if "error" in columns:
        handles += [
            Patch(facecolor=ERROR_CORRECT / 255.0, label="correct"),
            Patch(facecolor=ERROR_WRONG / 255.0, label="wrong"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    return fig


def _series(rows: Sequence[Mapping[str, Any]], x_key: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        y = row.get(key)
        if row.get(x_key) is None or y is None:
            continue
        try:
            yv = float(y)
        except (TypeError, ValueError):
            continue
        if np.isfinite(yv):
            xs.append(float(row[x_key]))
            ys.append(yv)
    return xs, ys


def plot_curves(metrics_rows: Iterable[Mapping[str, Any]] | Any, x_key: str = "epoch") -> Figure:
    """Training curves from the rows of ``metrics.jsonl`` (dicts, or a pandas DataFrame).

    Three panels against ``x_key``: every key ending in ``loss`` (e.g. ``train_loss``), every key
    starting with ``lr``, and every key containing ``miou`` (fractions, drawn in %). Rows without a
    value for a key (e.g. epochs without validation) are skipped for that key.
    """
    if hasattr(metrics_rows, "to_dict"):  # DataFrame
        metrics_rows = metrics_rows.to_dict("records")
    rows = [dict(r) for r in metrics_rows]
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != x_key]
    panels = (
        ("loss", [k for k in keys if k.lower().endswith("loss")], 1.0),
        ("learning rate", [k for k in keys if k.lower().startswith("lr")], 1.0),
        ("mIoU (%)", [k for k in keys if "miou" in k.lower()], 100.0),
    )
    fig = _new_figure((12, 3.4))
    axes = fig.subplots(1, 3)
    for ax, (title, names, scale) in zip(axes, panels):
        drawn = False
        for name in names:
            xs, ys = _series(rows, x_key, name)
            if xs:
                ax.plot(xs, [y * scale for y in ys], marker="o" if len(xs) < 30 else None, markersize=3, label=name)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_confusion(confusion: Any, classes: Sequence[str], annotate: bool | None = None) -> Figure:
    """Row-normalised confusion matrix heatmap (rows = ground truth, in %; empty rows blank).

    ``annotate`` writes the percentages in the cells (default: when there are at most 20 classes).
    """
    import seaborn as sns

    cm = _to_numpy(confusion).astype(np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise VisualizeError(f"plot_confusion: confusion {cm.shape} does not match {len(classes)} classes")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(rows > 0, cm / rows * 100.0, np.nan)
    n = len(classes)
    annotate = n <= 20 if annotate is None else annotate
    side = max(5.0, 0.45 * n + 2.0)
    fig = _new_figure((side + 1.0, side))
    ax = fig.subplots()
    sns.heatmap(
        norm, ax=ax, vmin=0, vmax=100, cmap="Blues", square=True, annot=annotate, fmt=".0f",
        annot_kws={"fontsize": 7}, xticklabels=list(classes), yticklabels=list(classes),
        cbar_kws={"label": "% of ground-truth pixels"},
    )
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    return fig


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of a ``uint8 (H, W, 3)`` RGB image (for widgets and files)."""
    import cv2

    arr = _to_numpy(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise VisualizeError(f"to_png_bytes: expected uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr[..., ::-1]))
    if not ok:
        raise VisualizeError("to_png_bytes: OpenCV could not encode the image as PNG")
    return buf.tobytes()
