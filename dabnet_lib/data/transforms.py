"""Train and eval pipelines: ``(image uint8 (H, W, 3) RGB, label (H, W) int) -> (image float32 tensor
(3, h, w), label int64 tensor (h, w))``.

As in the paper's code, normalisation subtracts the per-channel RGB mean only (no division by a std
unless ``std`` is given). Images resize bilinearly, labels nearest-neighbour so they stay integer;
every geometric step moves image and label together. Labels use ``cv2.INTER_NEAREST_EXACT`` (pixel-centre
aligned, the same sampling geometry as the bilinear image resize; plain ``INTER_NEAREST`` shifts by up
to half a source pixel).

Randomness and reproducibility: ``TrainTransform(rng=None)`` draws from a numpy Generator that it seeds,
once per process, from ``torch.initial_seed()``. PyTorch sets that seed distinctly in every DataLoader
worker (from the main process's torch RNG), so ``torch.manual_seed(seed)`` in the engine makes a run
reproducible for any ``num_workers`` with no ``worker_init_fn``. Pass ``rng=np.random.default_rng(s)``
to control the stream directly (single process, tests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .datasets import DatasetInfo

#: The paper's random scales (multiplied by ``base_scale``).
PAPER_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


#: mean or std: 3 values (R, G, B) in 0..255 units, as a sequence or an array
Vector = Sequence[float] | np.ndarray


def _optional_vector(values: Vector | None, what: str) -> np.ndarray | None:
    return None if values is None else _vector(values, what)


def _vector(values: Vector, what: str) -> np.ndarray:
    vec = np.asarray(values, dtype=np.float32).reshape(-1)
    if vec.shape != (3,):
        raise ValueError(f"{what} must hold 3 values (R, G, B), got {values!r}")
    if what == "std" and np.any(vec <= 0):
        raise ValueError(f"std must be positive, got {values!r}")
    return vec


def _to_tensor(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_hwc.transpose(2, 0, 1)))


def normalize(image: np.ndarray, mean: Vector, std: Vector | None = None) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 tensor (3, H, W) = (image - mean) [/ std], mean/std in 0..255 units."""
    out = image.astype(np.float32)
    out -= _vector(mean, "mean")
    std_v = _optional_vector(std, "std")
    if std_v is not None:
        out /= std_v
    return _to_tensor(out)


def denormalize(image: torch.Tensor | np.ndarray, mean: Vector, std: Vector | None = None) -> np.ndarray:
    """Inverse of :func:`normalize` for display: (3, H, W) float -> uint8 (H, W, 3) RGB (rounded, clipped)."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    arr = arr.astype(np.float32).transpose(1, 2, 0)
    std_v = _optional_vector(std, "std")
    if std_v is not None:
        arr = arr * std_v
    arr = arr + _vector(mean, "mean")
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _label_for_cv2(label: np.ndarray) -> np.ndarray:
    """OpenCV resizes uint8/uint16/int16/int32 but not int64: narrow when needed."""
    if label.dtype in (np.uint8, np.uint16, np.int16, np.int32):
        return label
    return label.astype(np.int32)


class TrainTransform:
    """Random scale -> pad -> random crop -> random mirror -> [colour jitter] -> mean subtraction.

    - scale: one of ``scales`` times ``base_scale`` (uniform choice), bilinear image / nearest label;
    - pad: where the scaled image is smaller than ``crop_size`` it is padded at the bottom/right, the
      label with ``ignore_index`` and the image with the mean colour (0 after mean subtraction, as the
      official code pads the mean-subtracted image with 0);
    - crop: uniform random ``crop_size`` (H, W) window; mirror: horizontal flip with probability 0.5;
    - class-uniform crops (``class_crop`` = p > 0; not in the paper, off by default): with probability p the
      window is instead one holding a pixel of a class drawn uniformly among the image's classes (drawn before
      the scale is applied), so rare classes are cropped as often as common ones;
    - crop rejection (``max_class_ratio`` = r < 1; not in the paper, off by default): a uniform window in which
      one class fills more than r of the labelled pixels is redrawn, at most 10 draws in all;
      with p = 0 and r = 1 no extra random number is drawn, so the stream is the paper's;
    - colour jitter (``color_jitter`` = s > 0; not in the paper, off by default): brightness, contrast and
      saturation each scaled by a factor drawn uniformly from [1 - s, 1 + s] (see :func:`jitter_colors`), on the
      real pixels of the crop only; with s = 0 no random number is drawn, so the geometric stream is unchanged;
    - normalise: subtract ``mean`` (RGB, 0..255); divide by ``std`` only if given (the paper does not).

    ``mean`` and ``ignore_index`` must be given (e.g. ``info.official_mean``, ``info.ignore_index``), or
    use :meth:`for_dataset`. Output: float32 tensor (3, *crop_size), int64 tensor crop_size.
    """

    def __init__(
        self,
        crop_size: tuple[int, int],
        scales: Sequence[float] = PAPER_SCALES,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        ignore_index: int | None = None,
        mirror: bool = True,
        base_scale: float = 1.0,
        color_jitter: float = 0.0,
        class_crop: float = 0.0,
        max_class_ratio: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if mean is None or ignore_index is None:
            raise ValueError(
                "TrainTransform needs mean= and ignore_index= (e.g. info.official_mean, "
                "info.ignore_index) or use TrainTransform.for_dataset(info, crop_size)"
            )
        crop_h, crop_w = (int(v) for v in crop_size)
        if crop_h <= 0 or crop_w <= 0:
            raise ValueError(f"crop_size must be positive (H, W), got {crop_size!r}")
        if not scales or any(s <= 0 for s in scales) or base_scale <= 0:
            raise ValueError(f"scales and base_scale must be positive, got {scales!r} x {base_scale}")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter!r}")
        if not 0.0 <= class_crop <= 1.0:
            raise ValueError(f"class_crop must be in [0, 1], got {class_crop!r}")
        if not 0.0 < max_class_ratio <= 1.0:
            raise ValueError(f"max_class_ratio must be in (0, 1], got {max_class_ratio!r}")
        self.class_crop = float(class_crop)
        self.max_class_ratio = float(max_class_ratio)
        self.crop_size = (crop_h, crop_w)
        self.color_jitter = float(color_jitter)
        self.scales = tuple(float(s) for s in scales)
        self.base_scale = float(base_scale)
        self.mean = _vector(mean, "mean")
        self.std = _optional_vector(std, "std")
        self.ignore_index = int(ignore_index)
        self.mirror = bool(mirror)
        self.rng = rng
        self._own_rng: np.random.Generator | None = None
        self._own_key: tuple[int, int] | None = None

    @classmethod
    def for_dataset(cls, info: DatasetInfo, crop_size: tuple[int, int] | None = None, **kwargs) -> TrainTransform:
        """Transform with ``info``'s official mean and ignore index; ``crop_size`` defaults to the native size."""
        kwargs.setdefault("mean", info.official_mean)
        kwargs.setdefault("ignore_index", info.ignore_index)
        return cls(crop_size or info.native_size, **kwargs)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scales={self.scales}, base_scale={self.base_scale}, "
            f"mean={self.mean.tolist()}, std={None if self.std is None else self.std.tolist()}, "
            f"ignore_index={self.ignore_index}, mirror={self.mirror}, color_jitter={self.color_jitter}, "
            f"class_crop={self.class_crop}, max_class_ratio={self.max_class_ratio})"
        )

    def _generator(self) -> np.random.Generator:
        if self.rng is not None:
            return self.rng
        key = (os.getpid(), torch.initial_seed())
        if self._own_rng is None or self._own_key != key:
            self._own_rng = np.random.default_rng(key[1])
            self._own_key = key
        return self._own_rng

    def _class_anchor(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
        """(row, col) of a pixel of a class drawn uniformly among the classes ``label`` holds (class-uniform
        sampling: rare classes get as many crops as common ones), the pixel uniform within its class; None
        when the label holds no class (all ignore)."""
        flat = label.ravel()
        counts = np.bincount(flat[flat != self.ignore_index])
        present = np.flatnonzero(counts)
        if present.size == 0:
            return None
        cls = present[int(rng.integers(present.size))]
        where = np.flatnonzero(flat == cls)
        index = int(where[int(rng.integers(where.size))])
        return index // label.shape[1], index % label.shape[1]

    def _random_window(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """(top, left) of a uniform random crop window; with ``max_class_ratio < 1`` redrawn (up to 10 draws in
        all) while one class fills more than that share of the window's labelled pixels."""
        height, width = label.shape
        crop_h, crop_w = self.crop_size
        redraws = _WINDOW_DRAWS - 1 if self.max_class_ratio < 1.0 else 0
        while True:
            top = int(rng.integers(max(height, crop_h) - crop_h + 1))
            left = int(rng.integers(max(width, crop_w) - crop_w + 1))
            if redraws == 0:
                return top, left
            window = label[top : top + crop_h, left : left + crop_w].ravel()
            counts = np.bincount(window[window != self.ignore_index])
            if np.count_nonzero(counts) > 1 and counts.max() < self.max_class_ratio * counts.sum():
                return top, left
            redraws -= 1

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape[:2]} sizes differ")
        rng = self._generator()
        scale = self.scales[int(rng.integers(len(self.scales)))] * self.base_scale
        label = _label_for_cv2(label)
        anchor = self._class_anchor(label, rng) if self.class_crop > 0 and rng.random() < self.class_crop else None
        source_h, source_w = height, width = label.shape
        if scale != 1.0:
            height, width = max(1, round(height * scale)), max(1, round(width * scale))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
        crop_h, crop_w = self.crop_size
        if anchor is not None:
            # a window that holds the anchor pixel (at its scaled position), uniformly among those that do
            row = min(height - 1, int((anchor[0] + 0.5) * height / source_h))
            col = min(width - 1, int((anchor[1] + 0.5) * width / source_w))
            top = _window_holding(row, crop_h, height, rng)
            left = _window_holding(col, crop_w, width, rng)
        else:
            top, left = self._random_window(label, rng)
        flip = self.mirror and bool(rng.random() < 0.5)
        # Crop from the virtually padded canvas: only the overlap with the real image is copied.
        bottom, right = min(top + crop_h, height), min(left + crop_w, width)
        out_image = np.zeros((crop_h, crop_w, 3), dtype=np.float32)
        out_label = np.full((crop_h, crop_w), self.ignore_index, dtype=np.int64)
        window = image[top:bottom, left:right].astype(np.float32)
        if self.color_jitter > 0:
            factors = rng.uniform(1.0 - self.color_jitter, 1.0 + self.color_jitter, size=3)
            window = jitter_colors(window, float(factors[0]), float(factors[1]), float(factors[2]))
        window -= self.mean
        if self.std is not None:
            window /= self.std
        out_image[: bottom - top, : right - left] = window
        out_label[: bottom - top, : right - left] = label[top:bottom, left:right]
        if flip:
            out_image, out_label = out_image[:, ::-1], out_label[:, ::-1]
        return _to_tensor(out_image), torch.from_numpy(np.ascontiguousarray(out_label))


#: Crop windows drawn at most per sample when ``max_class_ratio < 1`` (the last one is kept).
_WINDOW_DRAWS = 10


def _window_holding(pixel: int, crop: int, size: int, rng: np.random.Generator) -> int:
    """Start of a ``crop``-long window on a ``size``-long axis (virtually padded to ``crop``) holding ``pixel``,
    uniform among the starts that do."""
    last_start = max(size, crop) - crop
    low, high = max(0, pixel - crop + 1), min(pixel, last_start)
    return int(rng.integers(low, high + 1))


#: ITU-R BT.601 luma weights (R, G, B): the grey level that contrast and saturation jitter move towards.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def jitter_colors(window: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Photometric jitter of float32 RGB pixels (h, w, 3) in 0..255, returned clipped to 0..255.

    In this order: ``x * brightness``; contrast blends with the window's mean luma
    (``mean + contrast * (x - mean)``); saturation blends each pixel with its own luma
    (``luma + saturation * (x - luma)``). Factor 1 leaves the image unchanged; each is > 0.
    """
    out: np.ndarray = window * np.float32(brightness)
    grey = np.float32((out @ _LUMA).mean())
    out = grey + np.float32(contrast) * (out - grey)
    luma: np.ndarray = (out @ _LUMA)[..., None]
    out = luma + np.float32(saturation) * (out - luma)
    return np.clip(out, 0.0, 255.0, out=out)


class EvalTransform:
    """Mean subtraction only (``std`` optional). ``scale != 1`` resizes the image (bilinear) for a
    lower-resolution forward pass; the label always stays at full size for evaluation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] | None = None, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.mean = _vector(mean, "mean")
        self.std = _optional_vector(std, "std")
        self.scale = float(scale)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(mean={self.mean.tolist()}, std={None if self.std is None else self.std.tolist()}, "
            f"scale={self.scale})"
        )

    def __call__(self, image: np.ndarray, label: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.scale != 1.0:
            height, width = image.shape[:2]
            size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        tensor = normalize(image, self.mean, self.std)
        if label is None:
            return tensor, None
        return tensor, torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
