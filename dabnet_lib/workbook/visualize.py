"""Pictures of labels, predictions and training runs (pure numpy / matplotlib, no widgets): the figures the
notebooks draw. Label colouring lives in :mod:`dabnet_lib.data.colors` and training curves in
:mod:`dabnet_lib.training.curves` (``plot_curves`` and ``error_map`` are importable from here too).

Colours come from the :class:`~dabnet_lib.data.datasets.DatasetInfo` passed in: ``palette`` is
``(C+1, 3) uint8`` RGB, row ``c`` for class ``c`` and the last row for the ignore/void label.
Images are ``uint8 (H, W, 3)`` RGB; labels and predictions are integer ``(H, W)`` class ids.
Figures are returned already closed in pyplot (they never pile up in loops, and a notebook shows
one only when it is the cell's value or passed to ``display``): ``fig.savefig(path)`` or
``IPython.display.display(fig)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..data.colors import ERROR_CORRECT, ERROR_WRONG, VisualizeError, colorize, error_map, to_numpy
from ..training.curves import new_figure
from ..training.curves import plot_curves as plot_curves  # re-exported: notebook 03 draws a run's curves from here

GRID_COLUMNS = ("image", "ground truth", "prediction", "error")


class InfoLike(Protocol):
    """What this module needs from a DatasetInfo."""

    classes: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int

    @property
    def num_classes(self) -> int: ...


def _rgb(colour: np.ndarray) -> tuple[float, float, float]:
    """A uint8 RGB colour (3,) as matplotlib's (r, g, b) floats in 0..1."""
    r, g, b = (float(v) / 255.0 for v in colour)
    return r, g, b


def legend_handles(classes: Sequence[str], palette: np.ndarray, ignore_name: str | None = None) -> list[Patch]:
    """One matplotlib ``Patch`` per class (colour ``palette[c]``), plus one for the ignore colour
    (``palette[-1]``) when ``ignore_name`` is given. Use with ``ax.legend(handles=...)``."""
    pal = np.asarray(palette, dtype=np.uint8)
    if pal.shape[0] < len(classes):
        raise VisualizeError(f"legend_handles: palette has {pal.shape[0]} colours for {len(classes)} classes")
    handles = [
        Patch(facecolor=_rgb(pal[i]), edgecolor="black", linewidth=0.3, label=str(n)) for i, n in enumerate(classes)
    ]
    if ignore_name is not None:
        handles.append(Patch(facecolor=_rgb(pal[-1]), edgecolor="black", linewidth=0.3, label=ignore_name))
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
    h, w = to_numpy(rows[0]["image"]).shape[:2]
    cell = 3.0
    fig = new_figure((cell * len(columns) * w / max(h, w) + 0.4, cell * len(rows) * h / max(h, w) + 1.2))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, row in enumerate(rows):
        image = to_numpy(row["image"])
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
            Patch(facecolor=_rgb(ERROR_CORRECT), label="correct"),
            Patch(facecolor=_rgb(ERROR_WRONG), label="wrong"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    return fig


def plot_confusion(confusion: Any, classes: Sequence[str], annotate: bool | None = None) -> Figure:
    """Row-normalised confusion matrix heatmap (rows = ground truth, in %; empty rows blank).

    ``annotate`` writes the percentages in the cells (default: when there are at most 20 classes).
    """
    import seaborn as sns

    cm = to_numpy(confusion).astype(np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise VisualizeError(f"plot_confusion: confusion {cm.shape} does not match {len(classes)} classes")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(rows > 0, cm / rows * 100.0, np.nan)
    n = len(classes)
    annotate = n <= 20 if annotate is None else annotate
    side = max(5.0, 0.45 * n + 2.0)
    fig = new_figure((side + 1.0, side))
    ax = fig.subplots()
    sns.heatmap(
        norm,
        ax=ax,
        vmin=0,
        vmax=100,
        cmap="Blues",
        square=True,
        annot=annotate,
        fmt=".0f",
        annot_kws={"fontsize": 7},
        xticklabels=list(classes),
        yticklabels=list(classes),
        cbar_kws={"label": "% of ground-truth pixels"},
    )
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    return fig
