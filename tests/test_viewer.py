"""Viewer: the pure state -> picture function, per-image IoU, and the widget driven through `.set`
and through its controls' callbacks (no browser), plus a real kernel run."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from dabnet_lib.data.colors import ERROR_CORRECT, ERROR_IGNORED, ERROR_WRONG, colorize, error_map, overlay
from dabnet_lib.workbook.viewer import (
    DIM,
    LAYERS,
    OUTLINE_COLOR,
    PredictionViewer,
    ViewerError,
    ViewerState,
    per_image_iou,
    render,
)
from fakes import FakeInfo

INFO = FakeInfo()
H, W = 12, 16


class FakeDataset:
    """``load``/``name``/``len``/``info``: deterministic random images; labels are blocks of classes."""

    def __init__(self, split: str, n: int, seed: int) -> None:
        self.split, self.n, self.seed, self.info = split, n, seed, INFO
        self.loads = 0

    def __len__(self) -> int:
        return self.n

    def name(self, i: int) -> str:
        return f"{self.split}_{i:03d}"

    def load(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.loads += 1
        rng = np.random.default_rng(self.seed * 1000 + i)
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        label = np.zeros((H, W), np.uint8)
        label[:, W // 3 :] = 1
        label[H // 2 :, 2 * W // 3 :] = 2
        label[0, :] = INFO.ignore_index
        label = np.roll(label, i, axis=1)  # each sample differs
        return image, label


class FakePredict:
    """A deterministic 'model': class from the red channel; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (image[..., 0].astype(np.int64) // 86).clip(0, 2)


def _sample(seed: int = 0):
    ds = FakeDataset("x", 1, seed)
    image, label = ds.load(0)
    return image, label, FakePredict()(image)


# ---------------------------------------------------------------- render (pure)


def test_render_layers_at_full_and_zero_opacity():
    image, label, pred = _sample()
    s = ViewerState(split="x")
    gt1 = render(dataclasses.replace(s, layer="ground truth", opacity=1.0), image, label, pred, INFO)
    np.testing.assert_array_equal(gt1, colorize(label, INFO.palette, INFO.ignore_index))
    pr1 = render(dataclasses.replace(s, layer="prediction", opacity=1.0), image, label, pred, INFO)
    np.testing.assert_array_equal(pr1, colorize(pred, INFO.palette, INFO.ignore_index))
    er1 = render(dataclasses.replace(s, layer="error", opacity=1.0), image, label, pred, INFO)
    np.testing.assert_array_equal(er1, error_map(pred, label, INFO.ignore_index))
    for layer in LAYERS:
        out = render(dataclasses.replace(s, layer=layer, opacity=0.0), image, label, pred, INFO)
        assert out.dtype == np.uint8 and out.shape == image.shape
        np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(
        render(dataclasses.replace(s, layer="image", opacity=0.9), image, label, pred, INFO), image
    )
    half = render(dataclasses.replace(s, layer="prediction", opacity=0.4), image, label, pred, INFO)
    np.testing.assert_array_equal(half, overlay(image, colorize(pred, INFO.palette, 255), 0.4))


def test_render_highlight_changes_only_other_pixels():
    image, label, pred = _sample()
    # the class mask each layer highlights: label, prediction, or either (error layer)
    for layer, mask in (("ground truth", label == 1), ("prediction", pred == 1), ("error", (label == 1) | (pred == 1))):
        base = render(ViewerState("x", layer=layer, opacity=0.7), image, label, pred, INFO)
        lit = render(ViewerState("x", layer=layer, opacity=0.7, highlight=1), image, label, pred, INFO)
        assert mask.any() and (~mask).any()
        np.testing.assert_array_equal(lit[mask], base[mask])
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
        assert ring.any()
        assert (lit[ring] == OUTLINE_COLOR).all()
        far = ~mask & ~ring
        assert far.any()
        np.testing.assert_array_equal(lit[far], np.rint(base[far] * DIM).astype(np.uint8))
        assert (lit[far] != base[far]).any()


def test_render_without_label_and_invalid_states():
    image, label, pred = _sample()
    gt = render(ViewerState("x", layer="ground truth", opacity=1.0), image, None, pred, INFO)
    assert (gt == INFO.palette[-1]).all()
    with pytest.raises(ViewerError, match="unknown layer"):
        render(ViewerState("x", layer="overlay"), image, label, pred, INFO)
    with pytest.raises(ViewerError, match="opacity"):
        render(ViewerState("x", opacity=1.2), image, label, pred, INFO)
    with pytest.raises(ViewerError, match="highlight"):
        render(ViewerState("x", highlight=3), image, label, pred, INFO)
    with pytest.raises(ViewerError, match="needs a prediction"):
        render(ViewerState("x", layer="error"), image, label, None, INFO)
    with pytest.raises(ViewerError, match="shape"):
        render(ViewerState("x"), image, label, pred[:, :5], INFO)


def test_per_image_iou_by_hand():
    label = np.array([[0, 0, 1], [1, 255, 1]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    df = per_image_iou(pred, label, INFO)
    assert df["class"].tolist() == list(INFO.classes)
    # class 0: TP 1, GT 2, P 2 -> 1/3; class 1: TP 2, GT 3, P 3 -> 2/4; class 2 only on the ignored pixel.
    np.testing.assert_allclose(df["iou"].to_numpy(), [1 / 3, 1 / 2, np.nan], equal_nan=True)
    assert df["gt_pixels"].tolist() == [2, 3, 0] and df["pred_pixels"].tolist() == [2, 3, 0]
    assert df.attrs["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert df.attrs["pixel_accuracy"] == pytest.approx(3 / 5)
    assert per_image_iou(pred, None, INFO)["iou"].isna().all()  # unlabelled image: nothing scored


# ---------------------------------------------------------------- the widget


def _viewer(**kw):
    datasets = {"val": FakeDataset("val", 4, seed=1), "test": FakeDataset("test", 2, seed=2)}
    predict = FakePredict()
    return PredictionViewer(datasets, predict, **kw), datasets, predict


def _png(viewer) -> np.ndarray:
    data = bytes(viewer.image_widget.value)
    assert data.startswith(b"\x89PNG")
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def _expected(viewer, datasets) -> np.ndarray:
    s = viewer.state
    image, label = datasets[s.split].load(s.index)
    return render(s, image, label, FakePredict()(image), INFO)


def test_viewer_initial_picture_and_controls():
    viewer, datasets, predict = _viewer()
    c = viewer.controls
    assert viewer.state == ViewerState("val", 0, "prediction", 0.6, None)
    assert (c["split"].value, c["index"].value, c["index"].max) == ("val", 0, 3)
    assert c["layer"].options == LAYERS and c["layer"].value == "prediction"
    assert c["opacity"].value == pytest.approx(0.6)
    assert c["highlight"].options[0][0] == "(none)" and len(c["highlight"].options) == 4
    np.testing.assert_array_equal(viewer.current_image(), _expected(viewer, datasets))
    np.testing.assert_array_equal(_png(viewer), viewer.current_image())
    assert "val_000" in viewer.status_widget.value
    assert predict.calls == 1
    # one legend: the IoU table names every class with its colour; the key below holds the other colours
    for name, rgb in zip(INFO.classes, INFO.palette[: INFO.num_classes], strict=True):  # the last row is void
        assert name in viewer.iou_widget.value and name not in viewer.legend_widget.value
        assert f"rgb({rgb[0]},{rgb[1]},{rgb[2]})" in viewer.iou_widget.value
    for rgb in (ERROR_CORRECT, ERROR_WRONG, ERROR_IGNORED):
        assert f"rgb({rgb[0]},{rgb[1]},{rgb[2]})" in viewer.legend_widget.value
    # the layer toggle has a row of its own, its buttons as wide as their labels
    rows = viewer.widget.children
    assert any(list(row.children) == [c["layer"]] for row in rows if hasattr(row, "children"))
    assert c["layer"].style.button_width == "auto"


def test_viewer_can_open_on_any_image():
    viewer, _, _ = _viewer(index=2)
    assert viewer.state.index == 2 and viewer.controls["index"].value == 2
    assert "val_002" in viewer.status_widget.value
    with pytest.raises(ViewerError, match="out of range"):
        _viewer(index=4)


def test_viewer_iou_table_shows_percentages():
    viewer, _, _ = _viewer()
    df = viewer.current_iou()
    html = viewer.iou_widget.value
    for value in df["iou"].dropna():
        assert f"{100 * value:.1f}%" in html
    assert f"{100 * df.attrs['miou']:.1f}%" in html
    assert "mIoU" in html


def test_set_changes_picture_and_caches_predictions():
    viewer, datasets, predict = _viewer()
    first_png = viewer.image_widget.value
    viewer.set(index=2)
    assert viewer.controls["index"].value == 2
    assert bytes(viewer.image_widget.value) != bytes(first_png)
    np.testing.assert_array_equal(_png(viewer), _expected(viewer, datasets))
    assert "val_002" in viewer.status_widget.value
    assert predict.calls == 2
    viewer.set(layer="ground truth", opacity=1.0)
    np.testing.assert_array_equal(viewer.current_image(), colorize(datasets["val"].load(2)[1], INFO.palette, 255))
    assert viewer.controls["layer"].value == "ground truth"
    viewer.set(index=0)
    viewer.set(highlight=1)
    assert viewer.controls["highlight"].value == 1
    viewer.set(highlight="car")
    assert viewer.state.highlight == 2 and viewer.controls["highlight"].value == 2
    viewer.set(highlight=None)
    assert viewer.controls["highlight"].value == -1 and viewer.state.highlight is None
    with pytest.raises(ViewerError, match="unknown class 'bus'"):
        viewer.set(highlight="bus")
    assert predict.calls == 2  # layer/opacity/highlight and revisits never re-run the model
    np.testing.assert_array_equal(_png(viewer), _expected(viewer, datasets))


def test_split_change_resets_index_and_slider_range():
    viewer, datasets, _ = _viewer()
    viewer.set(index=3)
    viewer.set(split="test")
    assert viewer.state.split == "test" and viewer.state.index == 0
    assert (viewer.controls["index"].max, viewer.controls["index"].value) == (1, 0)
    assert viewer.controls["split"].value == "test"
    np.testing.assert_array_equal(_png(viewer), _expected(viewer, datasets))
    with pytest.raises(ViewerError, match=r"out of range for split 'test' \(0..1\)"):
        viewer.set(index=3)
    assert viewer.state.index == 0
    viewer.set(split="val", index=3)
    assert (viewer.controls["index"].max, viewer.controls["index"].value) == (3, 3)
    with pytest.raises(ViewerError, match="unknown split"):
        viewer.set(split="train")
    with pytest.raises(ViewerError, match="unknown fields"):
        viewer.set(zoom=2)


def test_widget_callbacks_take_the_set_path():
    viewer, datasets, _ = _viewer()
    c = viewer.controls
    before = viewer.image_widget.value
    c["index"].value = 1  # what a slider drag does
    assert viewer.state.index == 1 and bytes(viewer.image_widget.value) != bytes(before)
    np.testing.assert_array_equal(_png(viewer), _expected(viewer, datasets))
    c["layer"].value = "error"
    c["opacity"].value = 1.0
    image, label = datasets["val"].load(1)
    np.testing.assert_array_equal(viewer.current_image(), error_map(FakePredict()(image), label, 255))
    c["highlight"].value = 0
    assert viewer.state.highlight == 0
    c["highlight"].value = -1
    assert viewer.state.highlight is None
    c["split"].value = "test"
    assert viewer.state.index == 0 and c["index"].max == 1
    viewer.next_button.click()
    assert viewer.state.index == 1
    viewer.next_button.click()  # wraps around
    assert viewer.state.index == 0
    viewer.prev_button.click()
    assert viewer.state.index == 1 and c["index"].value == 1
    np.testing.assert_array_equal(_png(viewer), _expected(viewer, datasets))


def test_widget_failure_is_shown_and_state_kept():
    datasets = {"val": FakeDataset("val", 3, seed=1)}

    def predict(image):
        if image[0, 0, 0] == datasets["val"].load(2)[0][0, 0, 0]:
            raise RuntimeError("model exploded")
        return FakePredict()(image)

    viewer = PredictionViewer(datasets, predict)
    shown = viewer.image_widget.value
    viewer.controls["index"].value = 2
    assert "model exploded" in viewer.error_widget.value
    assert viewer.state.index == 0 and viewer.controls["index"].value == 0
    assert bytes(viewer.image_widget.value) == bytes(shown)
    viewer.controls["index"].value = 1
    assert viewer.error_widget.value == "" and viewer.state.index == 1


def test_dom_classes_display_bundle_and_constructor_errors():
    viewer, _, _ = _viewer()
    classes = {
        "dabnet-viewer-image": viewer.image_widget,
        "dabnet-viewer-iou": viewer.iou_widget,
        "dabnet-viewer-slider": viewer.controls["index"],
        "dabnet-viewer-layer": viewer.controls["layer"],
        "dabnet-viewer": viewer.widget,
    }
    for name, widget in classes.items():
        assert name in widget._dom_classes
    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == viewer.widget.model_id
    with pytest.raises(ViewerError, match="no images"):
        PredictionViewer({"val": FakeDataset("val", 0, 1)}, FakePredict())
    with pytest.raises(ViewerError, match="at least one split"):
        PredictionViewer({}, FakePredict())
    with pytest.raises(ViewerError, match="predict returned shape"):
        PredictionViewer({"val": FakeDataset("val", 1, 1)}, lambda im: np.zeros((2, 2), np.int64))


def test_large_images_are_downscaled_for_display_only():
    viewer, _, _ = _viewer(max_width=8)
    assert _png(viewer).shape == (H // 2, 8, 3)
    assert viewer.current_image().shape == (H, W, 3)


def test_viewer_with_real_camvid(camvid_root):
    from dabnet_lib.data.datasets import CamVid

    ds = CamVid(camvid_root, "val")
    answers = {}  # a perfect 'model': the ground truth, with void pixels called class 0
    for i in range(2):
        image, label = ds.load(i)
        answers[image.tobytes()] = np.where(label == ds.info.ignore_index, 0, label).astype(np.int64)

    def predict(image):
        return answers[image.tobytes()]

    viewer = PredictionViewer({"val": ds}, predict)
    viewer.set(index=1, layer="prediction", opacity=1.0)
    image, label = ds.load(1)
    assert viewer.current_image().shape == image.shape
    df = viewer.current_iou()
    present = df[(df["gt_pixels"] > 0) & (df["class"] != ds.info.classes[0])]
    assert len(present) > 3 and (present["iou"] == 1.0).all()
    assert "100.0%" in viewer.iou_widget.value
    assert ds.name(1) in viewer.status_widget.value


NOTEBOOK_CODE = """
import numpy as np
from dataclasses import dataclass
from IPython.display import display
from dabnet_lib.workbook.viewer import PredictionViewer
from dabnet_lib.workbook.visualize import sample_grid

@dataclass(frozen=True)
class Info:
    classes: tuple = ("a", "b")
    palette: np.ndarray = None
    ignore_index: int = 255
    @property
    def num_classes(self):
        return 2

info = Info(palette=np.array([[255, 0, 0], [0, 0, 255], [0, 0, 0]], np.uint8))

class DS:
    info = info
    def __len__(self): return 3
    def name(self, i): return f"img{i}"
    def load(self, i):
        img = np.full((8, 10, 3), 40 * i, np.uint8)
        lab = np.zeros((8, 10), np.uint8); lab[:, 5:] = 1
        return img, lab

viewer = PredictionViewer({"val": DS()}, lambda im: np.ones(im.shape[:2], np.int64))
display(viewer)
viewer.set(index=2, layer="error")
print("index", viewer.state.index)
fig = sample_grid([{"image": DS().load(0)[0], "label": DS().load(0)[1], "pred": None}], info)
display(fig)
"""


def test_viewer_and_figure_display_in_a_real_kernel(tmp_path):
    """As under papermill: a kernel with no front end; constructing and displaying must not fail."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(NOTEBOOK_CODE))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"]
    mimetypes = [m for o in outputs if o.output_type == "display_data" for m in o.data]
    assert "application/vnd.jupyter.widget-view+json" in mimetypes
    assert "image/png" in mimetypes  # the matplotlib Figure rendered as a picture
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "index 2" in text
    json.dumps(nb)  # the executed notebook is serialisable
