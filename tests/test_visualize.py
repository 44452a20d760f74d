"""visualize, data.colors, training.curves: colours at known pixels, blending, error maps, legends and the figures'
contents."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from dabnet_lib.data.colors import (
    ERROR_CORRECT,
    ERROR_IGNORED,
    ERROR_WRONG,
    VisualizeError,
    colorize,
    error_map,
    overlay,
    to_png_bytes,
)
from dabnet_lib.training.curves import plot_curves
from dabnet_lib.workbook.visualize import legend_handles, plot_confusion, sample_grid
from fakes import FakeInfo

INFO = FakeInfo(palette=np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [1, 2, 3]], dtype=np.uint8))
LABEL = np.array([[0, 1, 2], [255, 2, 0]], dtype=np.uint8)
PRED = np.array([[0, 2, 2], [1, 2, 1]], dtype=np.int64)


def test_colorize_known_pixels():
    out = colorize(LABEL, INFO.palette, INFO.ignore_index)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [40, 50, 60]
    assert out[0, 2].tolist() == [70, 80, 90]
    assert out[1, 0].tolist() == [1, 2, 3]  # ignore -> last row
    np.testing.assert_array_equal(colorize(torch.from_numpy(LABEL.astype(np.int64)), INFO.palette, 255), out)


def test_colorize_rejects_values_outside_palette():
    bad = LABEL.copy()
    bad[0, 0] = 3  # == C but not the ignore index
    with pytest.raises(VisualizeError, match=r"\[3\].*ignore index 255"):
        colorize(bad, INFO.palette, INFO.ignore_index)
    with pytest.raises(VisualizeError, match=r"\(H, W\)"):
        colorize(LABEL[None], INFO.palette, INFO.ignore_index)


def test_overlay_blends_with_scalar_and_per_pixel_alpha():
    image = np.full((2, 3, 3), 100, np.uint8)
    color = np.full((2, 3, 3), 201, np.uint8)
    np.testing.assert_array_equal(overlay(image, color, 0.0), image)
    np.testing.assert_array_equal(overlay(image, color, 1.0), color)
    half = overlay(image, color, 0.5)
    assert half.dtype == np.uint8 and np.all(half == 150)  # 150.5 rounds to even
    alpha = np.array([[0.0, 1.0, 0.25], [1.0, 0.0, 0.5]])
    out = overlay(image, color, alpha)
    assert out[0, 0, 0] == 100 and out[0, 1, 0] == 201 and out[0, 2, 0] == 125
    with pytest.raises(VisualizeError, match=r"\[0, 1\]"):
        overlay(image, color, 1.5)
    with pytest.raises(VisualizeError, match="must both be"):
        overlay(image, color[:1], 0.5)


def test_error_map_colours():
    out = error_map(PRED, LABEL, INFO.ignore_index)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == ERROR_CORRECT.tolist()
    assert out[0, 1].tolist() == ERROR_WRONG.tolist()
    assert out[1, 0].tolist() == ERROR_IGNORED.tolist()
    assert out[1, 2].tolist() == ERROR_WRONG.tolist()
    assert len({tuple(ERROR_CORRECT), tuple(ERROR_WRONG), tuple(ERROR_IGNORED)}) == 3


def test_legend_handles_names_and_colours():
    handles = legend_handles(INFO.classes, INFO.palette)
    assert [h.get_label() for h in handles] == list(INFO.classes)
    np.testing.assert_allclose(handles[2].get_facecolor()[:3], INFO.palette[2] / 255.0)
    with_void = legend_handles(INFO.classes, INFO.palette, ignore_name="void")
    assert with_void[-1].get_label() == "void" and len(with_void) == 4
    np.testing.assert_allclose(with_void[-1].get_facecolor()[:3], INFO.palette[-1] / 255.0)


def _axes_images(fig: Figure) -> list[np.ndarray]:
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


def test_sample_grid_draws_each_view():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)
    rows = [
        {"image": image, "label": LABEL, "pred": PRED, "title": "first"},
        {"image": image, "label": None, "pred": PRED, "title": "unlabelled"},
    ]
    fig = sample_grid(rows, INFO)
    assert isinstance(fig, Figure)
    grid_axes = [ax for ax in fig.axes if ax.get_title() or ax.images or ax.texts]
    assert len(grid_axes) == 8
    images = _axes_images(fig)
    assert len(images) == 4 + 2  # row 2 has no ground truth, hence no error map
    np.testing.assert_array_equal(images[0], image)
    np.testing.assert_array_equal(images[1], colorize(LABEL, INFO.palette, 255))
    np.testing.assert_array_equal(images[2], colorize(PRED, INFO.palette, 255))
    np.testing.assert_array_equal(images[3], error_map(PRED, LABEL, 255))
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "prediction", "error"]
    assert fig.axes[0].get_ylabel() == "first"
    assert sum(t.get_text() == "n/a" for ax in fig.axes for t in ax.texts) == 2
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_labels[:4] == ["sky", "road", "car", "ignore"]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
    with pytest.raises(VisualizeError):
        sample_grid([], INFO)


def test_plot_curves_series_and_missing_values():
    rows = [
        {"epoch": 1, "train_loss": 2.0, "lr": 1e-3},
        {"epoch": 2, "train_loss": 1.5, "lr": 9e-4, "val_miou": 0.25},
        {"epoch": 3, "train_loss": 1.2, "lr": 8e-4},
        {"epoch": 4, "train_loss": 1.0, "lr": 7e-4, "val_miou": 0.40},
    ]
    for source in (rows, pd.DataFrame(rows)):
        fig = plot_curves(source)
        loss_ax, lr_ax, miou_ax = fig.axes[:3]
        (loss_line,) = loss_ax.get_lines()
        assert loss_line.get_xdata().tolist() == [1, 2, 3, 4]
        assert loss_line.get_ydata().tolist() == [2.0, 1.5, 1.2, 1.0]
        assert lr_ax.get_lines()[0].get_ydata().tolist() == [1e-3, 9e-4, 8e-4, 7e-4]
        (miou_line,) = miou_ax.get_lines()
        assert miou_line.get_xdata().tolist() == [2, 4]  # NaN rows from the DataFrame dropped too
        np.testing.assert_allclose(miou_line.get_ydata(), [25.0, 40.0])  # drawn in %
        assert miou_line.get_label() == "val_miou"


def test_plot_confusion_is_row_normalised():
    confusion = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    fig = plot_confusion(confusion, INFO.classes)
    ax = fig.axes[0]
    values = np.ma.filled(ax.collections[0].get_array().astype(float), np.nan).reshape(3, 3)
    np.testing.assert_allclose(values[0], [75.0, 25.0, 0.0])
    assert np.isnan(values[1]).all()  # no ground-truth pixels: blank row
    np.testing.assert_allclose(values[2], [25.0, 25.0, 50.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == list(INFO.classes)
    assert ax.get_ylabel() == "ground truth"
    with pytest.raises(VisualizeError, match="does not match 2 classes"):
        plot_confusion(confusion, ("a", "b"))


def test_to_png_bytes_roundtrip():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decoded = cv2.imdecode(np.frombuffer(to_png_bytes(rgb), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(decoded, rgb)


def test_real_camvid_info_and_sample(camvid_root):
    from dabnet_lib.data.datasets import CAMVID, CamVid

    every = np.arange(12, dtype=np.uint8).reshape(3, 4)  # all 11 classes and the void label 11
    out = colorize(every, CAMVID.palette, CAMVID.ignore_index)
    np.testing.assert_array_equal(out.reshape(-1, 3), CAMVID.palette)
    ds = CamVid(camvid_root, "val")
    image, label = ds.load(0)
    color = colorize(label, CAMVID.palette, CAMVID.ignore_index)
    assert color.shape == image.shape and color.dtype == np.uint8
    fig = sample_grid([{"image": image, "label": label, "pred": label, "title": ds.name(0)}], CAMVID)
    images = _axes_images(fig)
    assert (images[3] == ERROR_CORRECT).all(axis=-1).sum() == (label != CAMVID.ignore_index).sum()
