"""Label colours: label maps and predictions drawn as ``uint8 (H, W, 3)`` RGB images (pure numpy).

``palette`` is a :class:`~dabnet_lib.data.datasets.DatasetInfo`'s ``(C+1, 3) uint8`` RGB table, row ``c`` for
class ``c`` and the last row for the ignore/void label; labels and predictions are integer ``(H, W)`` class ids.
Used by prediction output, TensorBoard examples and the workbook's figures and viewer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DabnetError

# Error-map colours (RGB): correct pixels, wrong pixels, ignored (unlabelled) pixels.
ERROR_CORRECT = np.array([0, 170, 0], dtype=np.uint8)
ERROR_WRONG = np.array([230, 25, 25], dtype=np.uint8)
ERROR_IGNORED = np.array([0, 0, 0], dtype=np.uint8)


class VisualizeError(DabnetError, ValueError):
    """Inputs that cannot be drawn (wrong shapes, ids outside the palette)."""


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a torch tensor is detached and copied to the CPU)."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def colorize(label: Any, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """Colour image ``uint8 (H, W, 3)`` of a label map ``(H, W)`` of ids in ``[0, C)`` or ``ignore_index``.

    ``palette`` is ``(C+1, 3)``; class ``c`` gets ``palette[c]``, ignored pixels ``palette[-1]``.
    Any other value raises :class:`VisualizeError`.
    """
    lab = to_numpy(label)
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
    img = to_numpy(image)
    col = to_numpy(color)
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
    p = to_numpy(pred)
    lab = to_numpy(label)
    if p.shape != lab.shape or p.ndim != 2:
        raise VisualizeError(f"error_map: pred {p.shape} and label {lab.shape} must both be the same (H, W)")
    out = np.empty((*p.shape, 3), dtype=np.uint8)
    ignored = lab.astype(np.int64) == ignore_index
    correct = (p.astype(np.int64) == lab.astype(np.int64)) & ~ignored
    out[:] = ERROR_WRONG
    out[correct] = ERROR_CORRECT
    out[ignored] = ERROR_IGNORED
    return out


def to_png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of a ``uint8 (H, W, 3)`` RGB image (for widgets and files)."""
    import cv2

    arr = to_numpy(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise VisualizeError(f"to_png_bytes: expected uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr[..., ::-1]))
    if not ok:
        raise VisualizeError("to_png_bytes: OpenCV could not encode the image as PNG")
    return buf.tobytes()
