"""Live training feedback in a notebook: a progress bar and curves that refresh in place.

``fit(recipe, ..., quiet=True, callbacks=[LiveProgress()])`` shows, under the cell:

- a tqdm notebook bar (iterations, or seconds for a wall-time budget) with its elapsed time and ETA,
  and ``loss`` (mean of the steps since the last refresh), ``lr`` and ``img/s`` beside it;
- one figure (:func:`dabnet_lib.training.curves.plot_curves`: loss, learning rate, val mIoU against the
  iteration) redrawn at every epoch's end (and every ``plot_every`` iterations when given) by
  updating one display, never by adding a figure per refresh.

``LiveProgress(live=False)`` is for executed copies (papermill, ``make run-all``): no widget and no
figure, only about ``lines`` short text lines over the whole run, so the saved notebook stays small.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..training.training_events import IterationInfo, TrainingCallback, kept_loss

LIVE_PLOT_CLASS = "dabnet-live-plot"  # DOM class of the live figure (the browser test finds it by it)


def figure_png(fig: Any, dpi: int = 72) -> bytes:
    """PNG bytes of a Matplotlib figure (the figure is not shown or kept by pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class LiveProgress(TrainingCallback):
    """Training feedback for notebooks (see the module docstring).

    live: True in JupyterLab (bar + live figure), False for executed copies (a few text lines).
    plot_every: also redraw the figure every N iterations (None: at epoch ends only).
    min_refresh_s: shortest interval between two bar refreshes (seconds).
    lines: text lines over the run when ``live`` is False.
    display: the function that shows or updates an output (IPython's ``display``; replaceable in tests).
    """

    def __init__(
        self,
        live: bool = True,
        plot_every: int | None = None,
        min_refresh_s: float = 0.5,
        lines: int = 10,
        display: Callable[..., Any] | None = None,
    ) -> None:
        self.live, self.plot_every, self.min_refresh_s, self.lines = live, plot_every, min_refresh_s, max(1, lines)
        self._display = display
        self.points: list[dict[str, Any]] = []  # rows for plot_curves: {"iteration", "loss"/"lr"/"val_miou"}
        self.bar: Any = None
        self.handle: Any = None
        self.plot_updates = 0
        self._drawn = 0  # len(points) at the last draw
        self._acc: torch.Tensor | None = None  # loss sum since the last refresh, on the training device
        self._loss_n: torch.Tensor | int = 0
        self._images = 0
        self._t_last = time.perf_counter()
        self._next_line = 0.0

    # -- events -------------------------------------------------------------------------------------
    def on_iteration(self, info: IterationInfo) -> None:
        self._window_loss(info)
        self._images += info["images"]
        now = time.perf_counter()
        if self.live:
            self._bar(info).update(self._bar_position(info) - self.bar.n)
            if now - self._t_last >= self.min_refresh_s:
                self._refresh_bar(info, now)
            if self.plot_every and info["iteration"] % self.plot_every == 0:
                self._draw()
        else:
            self._maybe_print(info, now)

    def on_epoch(self, row: Mapping[str, Any]) -> None:
        point = {"iteration": row["iteration"], "lr": row["lr"]}
        if row.get("val_miou") is not None:
            point["val_miou"] = row["val_miou"]
        self.points.append(point)
        if self.live:
            self._draw()
        elif row.get("val_miou") is not None:
            print(f"iteration {row['iteration']}: val mIoU {100 * row['val_miou']:.2f}%", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.live and len(self.points) > self._drawn:
            self._draw()

    # -- the bar ------------------------------------------------------------------------------------
    def _window_loss(self, info: IterationInfo) -> None:
        """Accumulate the loss on the device; a host sync happens only at a refresh."""
        kept, applied = kept_loss(info)
        self._acc = kept if self._acc is None else self._acc + kept
        self._loss_n = self._loss_n + applied

    def _take_loss(self) -> float | None:
        acc, n = self._acc, float(self._loss_n)
        self._acc, self._loss_n = None, 0
        return None if acc is None or n == 0 else float(acc) / n

    @staticmethod
    def _bar_position(info: IterationInfo) -> int:
        return int(min(info["elapsed_s"], info["budget_s"])) if info["budget_s"] else info["iteration"]

    def _bar(self, info: IterationInfo) -> Any:
        if self.bar is None:
            from tqdm.auto import tqdm

            budget = info["budget_s"]
            total = int(budget) if budget else info["total_iters"]
            self.bar = tqdm(
                total=total,
                initial=self._bar_position(info),
                unit="s" if budget else "it",
                desc="training",
                dynamic_ncols=True,
            )
        return self.bar

    def _refresh_bar(self, info: IterationInfo, now: float) -> None:
        loss = self._take_loss()
        rate = self._images / max(now - self._t_last, 1e-9)
        self._images, self._t_last = 0, now
        if loss is not None:
            self.points.append({"iteration": info["iteration"], "loss": loss})
        self.bar.set_postfix(
            epoch=info["epoch"] + 1,
            loss="-" if loss is None else f"{loss:.4f}",
            lr=f"{info['lr']:.2e}",
            **{"img/s": f"{rate:.1f}"},
        )

    # -- the figure ---------------------------------------------------------------------------------
    def _draw(self) -> None:
        from ..training.curves import plot_curves

        fig = plot_curves(self.points, x_key="iteration")
        png = figure_png(fig)
        self.plot_updates, self._drawn = self.plot_updates + 1, len(self.points)
        encoded = base64.b64encode(png).decode("ascii")
        bundle = {
            "text/html": f'<img class="{LIVE_PLOT_CLASS}" data-updates="{self.plot_updates}" '
            f'alt="{html.escape(self._caption())}" src="data:image/png;base64,{encoded}"/>',
            "image/png": encoded,
            "text/plain": self._caption(),
        }
        show = self._display or _ipython_display
        if self.handle is None:
            self.handle = show(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def _caption(self) -> str:
        last = self.points[-1]["iteration"] if self.points else 0
        return f"training curves at iteration {last} (update {self.plot_updates})"

    # -- executed copies ----------------------------------------------------------------------------
    def _maybe_print(self, info: IterationInfo, now: float) -> None:
        budget = info["budget_s"]
        done = info["elapsed_s"] / budget if budget else info["iteration"] / info["total_iters"]
        if done + 1e-9 < self._next_line and info["iteration"] != info["total_iters"]:
            return
        loss = self._take_loss()
        rate = self._images / max(now - self._t_last, 1e-9)
        self._images, self._t_last = 0, now
        self._next_line = (int(done * self.lines) + 1) / self.lines
        print(
            f"{100 * min(done, 1.0):3.0f}%  iteration {info['iteration']}/{info['total_iters']}, "
            f"loss {'-' if loss is None else f'{loss:.4f}'}, lr {info['lr']:.2e}, {rate:.1f} img/s",
            flush=True,
        )


def _ipython_display(bundle: Mapping[str, Any], **kwargs: Any) -> Any:
    from IPython.display import display

    return display(bundle, **kwargs)


def notebook_callbacks(live: bool, out_dir: str | Path, recipe: Any) -> list[Any]:
    """What notebook 03 passes to ``fit(callbacks=...)``: the :class:`LiveProgress` view (``live``:
    JupyterLab; False in executed copies) and TensorBoard event files in ``out_dir`` when the package
    is installed (:func:`dabnet_lib.workbook.tensorboard_log.tensorboard_callbacks`)."""
    from .tensorboard_log import tensorboard_callbacks

    return [LiveProgress(live=live), *tensorboard_callbacks(out_dir, recipe.to_dict())]
