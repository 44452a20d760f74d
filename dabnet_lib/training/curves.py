"""Training curves of a run: ``metrics.jsonl`` and ``curves.png`` (loss, learning rate, val mIoU) in its folder.

Figures are returned already closed in pyplot (they never pile up in loops, and a notebook shows one only
when it is the cell's value or passed to ``display``): ``fig.savefig(path)`` or ``IPython.display.display(fig)``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic_files import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot figure (so Jupyter's inline backend knows how to draw it) that pyplot no longer tracks."""
    import matplotlib.pyplot as plt  # on first use: importing the training engine loads no plotting

    fig = plt.figure(figsize=figsize, layout="constrained")
    plt.close(fig)
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
    fig = new_figure((12, 3.4))
    axes = fig.subplots(1, 3)
    for ax, (title, names, scale) in zip(axes, panels, strict=True):
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


def write_metrics(out_dir: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` (one JSON row per epoch) and, when rows exist, ``curves.png`` (loss, lr, mIoU)."""
    out = Path(out_dir)
    write_bytes_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    if rows:
        buf = io.BytesIO()
        plot_curves(rows).savefig(buf, format="png", dpi=100)
        write_bytes_atomic(out / "curves.png", buf.getvalue())
