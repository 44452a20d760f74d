"""Inference: predict one image, a split or a folder; write label / colour / overlay PNGs; export
Cityscapes submission files (trainId -> labelId, official file naming).

Images are uint8 RGB ``(H, W, 3)``; predictions are train-id maps ``(H, W)`` int64 at the input's
own size. Normalisation is the one the checkpoint was trained with (its ``mean``/``std`` keys) or,
for checkpoints that store none (the official release), the dataset's official channel mean.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.colors import colorize, overlay
from ..data.datasets import DATASETS, DatasetInfo, SegmentationDataset, get_info
from ..data.transforms import EvalTransform
from ..devices import resolve_device, to_memory_format
from ..errors import CheckpointError, DatasetError
from ..model.dabnet import build_from_checkpoint
from ..training.prediction import full_size_logits, normalised_batch, predict_classes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")
WRITE_KINDS = ("label", "color", "overlay")
_CITYSCAPES_STEM = re.compile(r"^([A-Za-z0-9-]+_\d+_\d+)")


# --------------------------------------------------------------------------- helpers shared with evaluation


def checkpoint_info(ckpt: Mapping[str, Any], num_classes: int, name: str, dataset: str | None = None) -> DatasetInfo:
    """The dataset a checkpoint belongs to: ``dataset`` if given, else the checkpoint's ``dataset``
    key, else the only known dataset with ``num_classes`` classes (official files store no name).
    Raises :class:`CheckpointError` when the class counts disagree or nothing fits."""
    chosen = dataset or ckpt.get("dataset")
    if chosen is None:
        fits = [key for key, info in DATASETS.items() if info.num_classes == num_classes]
        if len(fits) != 1:
            raise CheckpointError(
                f"checkpoint {name}: stores no dataset name and {num_classes} classes fit "
                f"{fits or 'no known dataset'}: pass --dataset ({', '.join(DATASETS)})"
            )
        chosen = fits[0]
    info = get_info(str(chosen))
    if info.num_classes != num_classes:
        raise CheckpointError(
            f"checkpoint {name}: has {num_classes} classes but dataset {info.name} has {info.num_classes}: "
            f"use a checkpoint trained on {info.name} or pass the --dataset it was trained on"
        )
    return info


def checkpoint_normalization(
    ckpt: Mapping[str, Any], info: DatasetInfo
) -> tuple[tuple[float, float, float], tuple[float, float, float] | None, str]:
    """``(mean, std, source)``: the checkpoint's own ``mean``/``std`` (RGB, 0..255) when it stores
    them, else the official release's mean for ``info`` with no std (what the official code did)."""
    if ckpt.get("mean") is not None:
        std = ckpt.get("std")
        return _rgb(ckpt["mean"]), _rgb(std) if std is not None else None, "checkpoint"
    return _rgb(info.official_mean), None, f"official {info.name} mean (the checkpoint stores none)"


def _rgb(values: Sequence[float]) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)  # exactly three (R, G, B)
    return r, g, b


def write_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8 (H, W) or RGB (H, W, 3)) as PNG atomically (temp file + rename)."""
    data = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(data))
    if not ok:
        raise DatasetError(f"could not encode {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); :class:`DatasetError` naming a corrupt file."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if image is None:
        raise DatasetError(f"image {path} is corrupt, truncated or not an image: remove or replace it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- predictor


class Predictor:
    """Runs ``model`` on uint8 RGB images at ``scale`` x their size and returns full-size outputs.

    ``mean``/``std``: RGB 0..255 normalisation (``std=None`` subtracts the mean only). The model is
    moved to ``device`` (``"auto"``: CUDA if available), put in eval mode and channels_last.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float] | None = None,
        device: str | torch.device = "auto",
        scale: float = 1.0,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.device = resolve_device(device)
        self.model = to_memory_format(model, torch.channels_last, self.device).eval()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std) if std is not None else None
        self.scale = float(scale)
        self._transform = EvalTransform(self.mean, self.std, scale=self.scale)
        self.info: DatasetInfo | None = None
        self.checkpoint: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "auto",
        scale: float = 1.0,
        dataset: str | None = None,
    ) -> Predictor:
        """A predictor for a checkpoint file, normalising as the checkpoint says (see module doc);
        ``.info`` is the checkpoint's dataset and ``.checkpoint`` the loaded dict (weights dropped)."""
        model, ckpt = build_from_checkpoint(path)
        info = checkpoint_info(ckpt, model.num_classes, str(path), dataset)
        mean, std, _source = checkpoint_normalization(ckpt, info)
        pred = cls(model, mean, std, device=device, scale=scale)
        pred.info = info
        pred.checkpoint = {
            k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")
        }
        return pred

    @staticmethod
    def _check(images: Sequence[np.ndarray]) -> None:
        """ValueError unless ``images`` are uint8 RGB ``(H, W, 3)`` of one size."""
        sizes = {img.shape[:2] for img in images}
        if len(sizes) != 1:
            raise ValueError(f"predict_batch needs images of one size, got {sorted(sizes)}")
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Class scores ``(C, H, W)`` float32 for one uint8 RGB image ``(H, W, 3)``."""
        self._check([image])
        with torch.inference_mode():  # the same pre-processing as evaluate()
            batch = normalised_batch([image], self._transform, self.device, torch.channels_last)
            return full_size_logits(self.model, batch, image.shape[:2])[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Train-id map ``(H, W)`` int64 for one uint8 RGB image ``(H, W, 3)``."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Train-id maps ``(N, H, W)`` int64 for same-size uint8 RGB images."""
        self._check(images)
        with torch.inference_mode():
            pred = predict_classes(self.model, images, self._transform, self.device, torch.channels_last)
            return pred.cpu().numpy().astype(np.int64, copy=False)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.model, "num_classes", None)


# --------------------------------------------------------------------------- sources


Source = SegmentationDataset | str | os.PathLike


def _iter_source(source: Source) -> tuple[int, Iterator[tuple[str, np.ndarray]], DatasetInfo | None]:
    """``(count, iterator of (name, image), dataset info or None)`` for a split or a folder."""
    if isinstance(source, SegmentationDataset):
        ds = source

        def gen_ds() -> Iterator[tuple[str, np.ndarray]]:
            for i in range(len(ds)):  # images only: no label decoding
                yield ds.name(i), ds.read_image(ds.samples[i][0])

        return len(ds), gen_ds(), ds.info
    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"input folder {folder} does not exist: pass a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"input folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise DatasetError(f"two inputs share the name {path.stem!r}: {seen[path.stem]} and {path}; rename one")
        seen[path.stem] = path

    def gen_folder() -> Iterator[tuple[str, np.ndarray]]:
        for path in files:
            yield path.stem, read_image(path)

    return len(files), gen_folder(), None


# --------------------------------------------------------------------------- writers


def predict_folder(
    predictor: Predictor,
    source: Source,
    out_dir: str | os.PathLike[str],
    info: DatasetInfo | None = None,
    write: Sequence[str] = WRITE_KINDS,
    alpha: float = 0.5,
    progress: bool = True,
) -> dict[str, list[Path]]:
    """Predict every image of a split (a dataset) or a folder (recursive) and write, per image
    ``name``: ``out_dir/label/name.png`` (uint8 train ids), ``out_dir/color/name.png`` (palette RGB)
    and ``out_dir/overlay/name.png`` (colour blended on the image with ``alpha``).

    ``info`` (palette, ignore index) defaults to the dataset's, then the predictor's. Every file is
    written atomically; a corrupt input stops the run with a :class:`DatasetError` naming it.
    Returns the written paths per kind.
    """
    kinds = tuple(write)
    bad = [k for k in kinds if k not in WRITE_KINDS]
    if bad or not kinds:
        raise DatasetError(f"unknown output kind(s) {bad or '(none)'}: choose from {', '.join(WRITE_KINDS)}")
    count, items, src_info = _iter_source(source)
    info = info or src_info or predictor.info
    if info is None and ("color" in kinds or "overlay" in kinds):
        raise DatasetError("colour and overlay outputs need a dataset palette: pass info= or --dataset")
    out = Path(out_dir)
    written: dict[str, list[Path]] = {k: [] for k in kinds}
    done = 0
    try:
        for name, image in tqdm(items, total=count, desc="predict", unit="img", disable=not progress):
            pred = predictor.predict(image)
            if "label" in kinds:
                written["label"].append(_emit(out / "label" / f"{name}.png", pred.astype(np.uint8)))
            if info is not None and ("color" in kinds or "overlay" in kinds):
                color = colorize(pred, info.palette, info.ignore_index)
                if "color" in kinds:
                    written["color"].append(_emit(out / "color" / f"{name}.png", color))
                if "overlay" in kinds:
                    written["overlay"].append(_emit(out / "overlay" / f"{name}.png", overlay(image, color, alpha)))
            done += 1
    except DatasetError as exc:
        raise DatasetError(
            f"{exc} (stopped after {done} of {count} images; those outputs in {out} are complete)"
        ) from None
    return written


def _emit(path: Path, array: np.ndarray) -> Path:
    write_png(path, array)
    return path


def cityscapes_label_lut() -> np.ndarray:
    """uint8 (256,) lookup table: trainId -> official labelId (cityscapesscripts' table); ids
    outside 0..18 map to 0 (``unlabeled``)."""
    from cityscapesscripts.helpers.labels import trainId2label

    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255:
            lut[train_id] = label.id
    return lut


def submission_name(name: str) -> str:
    """``<city>_<seq>_<frame>_leftImg8bit.png`` for a Cityscapes image stem, else DatasetError."""
    match = _CITYSCAPES_STEM.match(name)
    if not match:
        raise DatasetError(
            f"input {name!r} is not named like a Cityscapes image (<city>_<seq>_<frame>_leftImg8bit.png): "
            "the submission server matches results by that name"
        )
    return f"{match.group(1)}_leftImg8bit.png"


def export_cityscapes(
    predictor: Predictor,
    source: Source,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
) -> list[Path]:
    """Write official Cityscapes submission files into ``out_dir`` (flat): one uint8 single-channel
    PNG per image, named ``<city>_<seq>_<frame>_leftImg8bit.png``, at the input's native size, with
    **labelIds** (trainId 0 road -> 7, 13 car -> 26, ...). Returns the written paths."""
    if predictor.num_classes not in (None, 19):
        raise DatasetError(f"Cityscapes export needs a 19-class model; this one has {predictor.num_classes} classes")
    count, items, _ = _iter_source(source)
    lut = cityscapes_label_lut()
    out = Path(out_dir)
    written: list[Path] = []
    try:
        for name, image in tqdm(items, total=count, desc="cityscapes export", unit="img", disable=not progress):
            target = out / submission_name(name)
            if target in written:
                raise DatasetError(f"two inputs map to the same submission file {target.name}")
            pred = predictor.predict(image)
            if pred.max(initial=0) > 18:
                raise DatasetError(
                    f"prediction for {name} has class {int(pred.max())}: not a 19-class Cityscapes model"
                )
            written.append(_emit(target, lut[pred]))
    except DatasetError as exc:
        raise DatasetError(f"{exc} (stopped after {len(written)} of {count} images)") from None
    return written
