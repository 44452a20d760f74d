"""Interactive prediction viewer for notebooks (ipywidgets), with its picture logic kept pure.

- :class:`ViewerState` + :func:`render` -- what the viewer shows, as a plain function of the state
  and one sample: testable without widgets or a browser.
- :func:`per_image_iou` -- the per-class IoU of one image as a DataFrame.
- :class:`PredictionViewer` -- the widget: split dropdown, image slider (+ prev/next), layer toggle,
  opacity slider, highlighted class, the rendered PNG, the per-image IoU table (whose swatches are
  the class legend) and a one-line key of the error layer's colours. Every
  widget callback calls :meth:`PredictionViewer.set`, so driving ``.set(...)`` from Python takes
  exactly the path a click takes. Stable DOM classes (``dabnet-viewer-*``) let a browser test find
  the parts.
"""

from __future__ import annotations

import dataclasses
import html
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import pandas as pd

from ..data.colors import ERROR_CORRECT, ERROR_IGNORED, ERROR_WRONG, colorize, error_map, overlay, to_png_bytes
from ..errors import DabnetError
from ..training.metrics import ConfusionMatrix

LAYERS = ("image", "ground truth", "prediction", "error")
DIM = 0.3  # brightness kept by the pixels outside the highlighted class
OUTLINE_COLOR = np.array([255, 255, 0], dtype=np.uint8)  # ring drawn just outside the highlighted class
NO_HIGHLIGHT = -1  # the highlight dropdown's value for "no class"

log = logging.getLogger(__name__)


class ViewerError(DabnetError, ValueError):
    """Invalid viewer state or inputs (unknown split or layer, index out of range, bad prediction)."""


class SampleSource(Protocol):
    """What the viewer needs from a dataset (a :class:`~dabnet_lib.data.datasets.SegmentationDataset`)."""

    info: Any

    def __len__(self) -> int: ...
    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]: ...
    def name(self, i: int) -> str: ...


@dataclass
class ViewerState:
    """What the viewer shows.

    split: dataset key; index: sample in that split (0-based); layer: one of :data:`LAYERS`;
    opacity: colour-over-image blend in [0, 1] (0 = image only, 1 = colours only);
    highlight: class id to emphasise (others dimmed, class outlined) or None.
    """

    split: str
    index: int = 0
    layer: str = "prediction"
    opacity: float = 0.6
    highlight: int | None = None


def _check_state(state: ViewerState, num_classes: int) -> None:
    if state.layer not in LAYERS:
        raise ViewerError(f"unknown layer {state.layer!r}: choose one of {', '.join(LAYERS)}")
    if not 0.0 <= float(state.opacity) <= 1.0:
        raise ViewerError(f"opacity must lie in [0, 1], got {state.opacity}")
    if state.highlight is not None and not 0 <= int(state.highlight) < num_classes:
        raise ViewerError(f"highlight must be None or a class id in 0..{num_classes - 1}, got {state.highlight}")


def render(
    state: ViewerState,
    image: np.ndarray,
    label: np.ndarray | None,
    pred: np.ndarray | None,
    info: Any,
) -> np.ndarray:
    """The viewer's picture, ``uint8 (H, W, 3)`` RGB, for one sample.

    ``image`` uint8 (H, W, 3); ``label``/``pred`` (H, W) class ids (``label`` None = unlabelled,
    drawn as ignore). Layers: ``image`` (the photo), ``ground truth`` / ``prediction`` (palette
    colours blended over the photo with ``opacity``), ``error`` (:func:`~dabnet_lib.workbook.visualize.error_map`
    blended likewise). With ``highlight`` = c, pixels of class c (in the label for ``ground truth``,
    in the prediction for ``prediction`` and ``image``, in either for ``error``) stay as they are,
    every other pixel is darkened to :data:`DIM` and a ring of :data:`OUTLINE_COLOR` is drawn
    just outside the class.
    """
    _check_state(state, info.num_classes)
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ViewerError(f"render: image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    hw = img.shape[:2]
    lab = np.full(hw, info.ignore_index, dtype=np.int64) if label is None else np.asarray(label)
    for what, arr in (("label", lab), ("prediction", pred)):
        if arr is not None and np.asarray(arr).shape != hw:
            raise ViewerError(f"render: {what} shape {np.asarray(arr).shape} != image size {hw}")
    if pred is None and state.layer in ("prediction", "error"):
        raise ViewerError(f"render: layer {state.layer!r} needs a prediction")
    alpha = float(state.opacity)
    if state.layer == "image":
        out = img.copy()
    elif state.layer == "ground truth":
        out = overlay(img, colorize(lab, info.palette, info.ignore_index), alpha)
    elif state.layer == "prediction":
        out = overlay(img, colorize(pred, info.palette, info.ignore_index), alpha)
    else:
        out = overlay(img, error_map(pred, lab, info.ignore_index), alpha)
    if state.highlight is not None:
        c = int(state.highlight)
        if state.layer == "ground truth" or (state.layer == "image" and pred is None):
            mask = lab == c
        elif state.layer == "error":
            mask = (lab == c) | (np.asarray(pred) == c)
        else:
            mask = np.asarray(pred) == c
        out[~mask] = np.rint(out[~mask] * DIM).astype(np.uint8)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
        out[ring] = OUTLINE_COLOR
    return out


def per_image_iou(pred: np.ndarray, label: np.ndarray | None, info: Any) -> pd.DataFrame:
    """Per-class IoU of one image: columns ``class``, ``iou`` (fraction, NaN when the class is in
    neither), ``gt_pixels``, ``pred_pixels`` (scored pixels only). ``df.attrs`` holds ``miou``,
    ``official_miou`` and ``pixel_accuracy``. An unlabelled image (``label`` None) gives all NaN."""
    pred = np.asarray(pred)
    lab = np.full(pred.shape, info.ignore_index, dtype=np.int64) if label is None else np.asarray(label)
    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    cm.update(pred, lab)
    res = cm.compute()
    conf = res["confusion"]
    df = pd.DataFrame(
        {
            "class": list(info.classes),
            "iou": res["iou"],
            "gt_pixels": conf.sum(axis=1),
            "pred_pixels": conf.sum(axis=0),
        }
    )
    df.attrs.update(miou=res["miou"], official_miou=res["official_miou"], pixel_accuracy=res["pixel_accuracy"])
    return df


def _pct(x: float | None) -> str:
    return "&ndash;" if x is None or not np.isfinite(x) else f"{100.0 * x:.1f}%"


def _swatch(rgb: np.ndarray) -> str:
    r, g, b = (int(v) for v in rgb)
    return (
        f'<span style="display:inline-block;width:12px;height:12px;background:rgb({r},{g},{b});'
        'border:1px solid #444;margin-right:4px;vertical-align:middle"></span>'
    )


def iou_table_html(df: pd.DataFrame, palette: np.ndarray) -> str:
    """HTML table of :func:`per_image_iou`'s frame: swatch, class, IoU (%), then mIoU and pixel accuracy."""
    rows = "".join(
        f"<tr><td>{_swatch(palette[i])}{html.escape(str(r['class']))}</td>"
        f"<td style='text-align:right'>{_pct(r['iou'])}</td></tr>"
        for i, r in enumerate(df.to_dict("records"))
    )
    foot = (
        f"<tr><th>mIoU</th><th style='text-align:right'>{_pct(df.attrs.get('miou'))}</th></tr>"
        f"<tr><th>pixel accuracy</th><th style='text-align:right'>{_pct(df.attrs.get('pixel_accuracy'))}</th></tr>"
    )
    return (
        "<table style='border-collapse:collapse;font-size:12px'>"
        "<thead><tr><th style='text-align:left'>class</th><th>IoU</th></tr></thead>"
        f"<tbody>{rows}</tbody><tfoot>{foot}</tfoot></table>"
    )


def legend_html(info: Any) -> str:
    """The colours the IoU table does not show, on one line: the error layer's and the ignore label's
    (the class colours are the IoU table's swatches: one legend, not two)."""
    items = [f"<b>error layer</b> {_swatch(ERROR_CORRECT)}correct", f"{_swatch(ERROR_WRONG)}wrong"]
    if np.array_equal(np.asarray(info.palette[-1]), np.asarray(ERROR_IGNORED)):
        items.append(f"{_swatch(ERROR_IGNORED)}ignored / <i>unlabelled</i>")
    else:
        items += [f"{_swatch(ERROR_IGNORED)}ignored", f"&nbsp;&middot; {_swatch(info.palette[-1])}<i>unlabelled</i>"]
    return "<div style='font-size:12px;white-space:nowrap'>" + " ".join(items) + "</div>"


class PredictionViewer:
    """Notebook widget to browse predictions: ``display(viewer)`` or ``display(viewer.widget)``.

    Args:
        datasets: split name -> dataset (``load(i)``, ``name(i)``, ``len``, ``info``); all share one info.
        predict: ``image uint8 (H, W, 3) RGB -> (H, W)`` class ids (e.g. ``Predictor.predict``).
            Called once per (split, index); results are cached.
        split, index, layer, opacity: initial state (split defaults to the first key, index to 0).
        max_width: images wider than this are downscaled for display only (pixels).
    """

    def __init__(
        self,
        datasets: Mapping[str, SampleSource],
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        split: str | None = None,
        index: int = 0,
        layer: str = "prediction",
        opacity: float = 0.6,
        max_width: int | None = 1024,
    ) -> None:
        if not datasets:
            raise ViewerError("PredictionViewer needs at least one split, e.g. {'test': CamVid(root, 'test')}")
        self.datasets = dict(datasets)
        self.info = next(iter(self.datasets.values())).info
        for name, ds in self.datasets.items():
            if len(ds) == 0:
                raise ViewerError(f"PredictionViewer: split {name!r} has no images")
            if tuple(ds.info.classes) != tuple(self.info.classes):
                raise ViewerError(f"PredictionViewer: split {name!r} uses other classes than the first split")
        self.predict = predict
        self.max_width = max_width
        self._predictions: dict[tuple[str, int], np.ndarray] = {}
        self._sample: tuple[tuple[str, int], np.ndarray, np.ndarray | None, str] | None = None
        self._iou: tuple[tuple[str, int], pd.DataFrame] | None = None
        self._rendered: np.ndarray | None = None
        self._syncing = False
        state = ViewerState(
            split=split or next(iter(self.datasets)), index=int(index), layer=layer, opacity=float(opacity)
        )
        self._validate(state)
        self.state = state
        self._build_widgets()
        self._refresh()

    # ----- state ---------------------------------------------------------------------------
    def _validate(self, state: ViewerState) -> None:
        if state.split not in self.datasets:
            raise ViewerError(f"unknown split {state.split!r}: choose one of {', '.join(self.datasets)}")
        n = len(self.datasets[state.split])
        if not 0 <= state.index < n:
            raise ViewerError(f"index {state.index} out of range for split {state.split!r} (0..{n - 1})")
        _check_state(state, self.info.num_classes)

    def set(self, **changes: Any) -> None:
        """Change the state (``split``, ``index``, ``layer``, ``opacity``, ``highlight``) and re-render.

        Changing the split without giving ``index`` goes to image 0 of the new split. ``highlight``
        takes a class id, a class name, or None / -1 for "no class". Invalid values raise
        :class:`ViewerError` and leave the state unchanged.
        """
        fields = {f.name for f in dataclasses.fields(ViewerState)}
        unknown = set(changes) - fields
        if unknown:
            raise ViewerError(f"PredictionViewer.set: unknown fields {sorted(unknown)}; use {sorted(fields)}")
        if "index" in changes:
            changes["index"] = int(changes["index"])
        if "opacity" in changes:
            changes["opacity"] = float(changes["opacity"])
        if "highlight" in changes:
            h = changes["highlight"]
            if isinstance(h, str):
                if h not in self.info.classes:
                    raise ViewerError(f"unknown class {h!r} to highlight: choose one of {', '.join(self.info.classes)}")
                h = self.info.classes.index(h)
            changes["highlight"] = None if h is None or int(h) == NO_HIGHLIGHT else int(h)
        if "split" in changes and changes["split"] != self.state.split and "index" not in changes:
            changes["index"] = 0
        new = dataclasses.replace(self.state, **changes)
        self._validate(new)
        old, self.state = self.state, new
        try:
            self._sync_widgets()
            self._refresh()
        except Exception:
            self.state = old
            self._sync_widgets()
            raise

    def current_image(self) -> np.ndarray:
        """The picture shown now, ``uint8 (H, W, 3)`` RGB at full resolution (a copy)."""
        assert self._rendered is not None
        return self._rendered.copy()

    def current_iou(self) -> pd.DataFrame:
        """:func:`per_image_iou` of the sample shown now."""
        assert self._iou is not None
        return self._iou[1].copy()

    # ----- data ----------------------------------------------------------------------------
    def _load(self, key: tuple[str, int]) -> tuple[np.ndarray, np.ndarray | None, str]:
        if self._sample is None or self._sample[0] != key:
            ds = self.datasets[key[0]]
            image, label = ds.load(key[1])
            self._sample = (key, np.asarray(image), None if label is None else np.asarray(label), str(ds.name(key[1])))
        return self._sample[1], self._sample[2], self._sample[3]

    def _prediction(self, key: tuple[str, int], image: np.ndarray) -> np.ndarray:
        if key not in self._predictions:
            pred = np.asarray(self.predict(image))
            if pred.shape != image.shape[:2]:
                raise ViewerError(f"predict returned shape {pred.shape} for an image of size {image.shape[:2]}")
            self._predictions[key] = pred.astype(np.int64, copy=False)
        return self._predictions[key]

    def _refresh(self) -> None:
        s = self.state
        key = (s.split, s.index)
        image, label, name = self._load(key)
        pred = self._prediction(key, image)
        self._rendered = render(s, image, label, pred, self.info)
        if self._iou is None or self._iou[0] != key:
            self._iou = (key, per_image_iou(pred, label, self.info))
            self.iou_widget.value = iou_table_html(self._iou[1], self.info.palette)
        shown = self._rendered
        if self.max_width and shown.shape[1] > self.max_width:
            h = round(shown.shape[0] * self.max_width / shown.shape[1])
            shown = cv2.resize(shown, (self.max_width, h), interpolation=cv2.INTER_AREA)
        self.image_widget.value = to_png_bytes(shown)
        n = len(self.datasets[s.split])
        self.status_widget.value = (
            f"<b>{html.escape(s.split)}</b> {s.index + 1}/{n}: <code>{html.escape(name)}</code>"
            f"{'' if label is not None else ' (no ground truth)'}"
        )

    # ----- widgets -------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        s = self.state
        n = len(self.datasets[s.split])
        self.controls: dict[str, Any] = {
            "split": w.Dropdown(options=list(self.datasets), value=s.split, description="split"),
            "index": w.IntSlider(value=s.index, min=0, max=n - 1, description="image", continuous_update=False),
            # buttons as wide as their labels, the row as wide as the buttons: one row, full labels
            "layer": w.ToggleButtons(
                options=list(LAYERS),
                value=s.layer,
                style={"button_width": "auto"},
                layout=w.Layout(width="max-content"),
            ),
            "opacity": w.FloatSlider(
                value=s.opacity, min=0.0, max=1.0, step=0.05, description="opacity", continuous_update=False
            ),
            "highlight": w.Dropdown(
                options=[("(none)", NO_HIGHLIGHT)] + [(str(c), i) for i, c in enumerate(self.info.classes)],
                value=NO_HIGHLIGHT,
                description="highlight",
            ),
        }
        for field, control in self.controls.items():
            control.add_class(f"dabnet-viewer-{field}")
            control.observe(self._callback(field), names="value")
        self.controls["index"].add_class("dabnet-viewer-slider")
        self.controls["layer"].add_class("dabnet-viewer-layer")
        self.prev_button = w.Button(description="◀ prev", layout=w.Layout(width="80px"))
        self.next_button = w.Button(description="next ▶", layout=w.Layout(width="80px"))
        self.prev_button.add_class("dabnet-viewer-prev")
        self.next_button.add_class("dabnet-viewer-next")
        self.prev_button.on_click(lambda _b: self._step(-1))
        self.next_button.on_click(lambda _b: self._step(+1))
        self.image_widget = w.Image(format="png")
        self.image_widget.add_class("dabnet-viewer-image")
        self.iou_widget = w.HTML()
        self.iou_widget.add_class("dabnet-viewer-iou")
        self.legend_widget = w.HTML(legend_html(self.info))
        self.legend_widget.add_class("dabnet-viewer-legend")
        self.status_widget = w.HTML()
        self.status_widget.add_class("dabnet-viewer-status")
        self.error_widget = w.HTML()
        self.error_widget.add_class("dabnet-viewer-error")
        c = self.controls
        self.widget = w.VBox(
            [
                w.HBox([c["split"], self.prev_button, c["index"], self.next_button]),
                w.HBox([c["layer"]]),
                w.HBox([c["opacity"], c["highlight"]]),
                self.status_widget,
                self.error_widget,
                w.HBox(
                    [self.image_widget, self.iou_widget], layout=w.Layout(align_items="flex-start")
                ),  # never stretch the image
                self.legend_widget,
            ]
        )
        self.widget.add_class("dabnet-viewer")

    def _callback(self, field: str) -> Callable[[dict], None]:
        def on_change(change: dict) -> None:
            if self._syncing:
                return
            self._apply({field: change["new"]})

        return on_change

    def _step(self, delta: int) -> None:
        n = len(self.datasets[self.state.split])
        self._apply({"index": (self.state.index + delta) % n})

    def _apply(self, changes: dict[str, Any]) -> None:
        """Widget path: like :meth:`set`, but a failure is shown in the viewer (a browser has no traceback)."""
        try:
            self.set(**changes)
            self.error_widget.value = ""
        except Exception as exc:  # shown to the user, and logged with its traceback
            log.exception("viewer update %s failed", changes)
            self.error_widget.value = (
                f"<span style='color:#b00'>{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"
            )
            self._sync_widgets()

    def _sync_widgets(self) -> None:
        """Push the state into the controls without triggering their callbacks."""
        s = self.state
        c = self.controls
        self._syncing = True
        try:
            c["split"].value = s.split
            slider = c["index"]
            new_max = len(self.datasets[s.split]) - 1
            if slider.max != new_max:
                slider.value = 0  # valid under both the old and the new range
                slider.max = new_max
            slider.value = s.index
            c["layer"].value = s.layer
            c["opacity"].value = s.opacity
            c["highlight"].value = NO_HIGHLIGHT if s.highlight is None else s.highlight
        finally:
            self._syncing = False

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
