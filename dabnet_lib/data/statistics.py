"""Dataset-wide scans: ``statistics`` (mean, std, class frequencies and weights, cached as JSON),
``validate`` (every problem of a split at once) and ``check`` (raise on any problem).

It reads splits of :mod:`dabnet_lib.data.datasets` (which does not import this module).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..atomic_files import write_text_atomic
from ..errors import DatasetError

if TYPE_CHECKING:
    from .datasets import SegmentationDataset

#: ENet/ERFNet class-weight rule used by the paper: w_c = 1 / ln(CLASS_WEIGHT_C + p_c).
CLASS_WEIGHT_C = 1.10
_STATS_VERSION = 1
_CACHE_ENV = "DABNET_CACHE_DIR"


def _writable_dir(path: Path) -> bool:
    """True when ``path`` is an existing folder we may write into. The owner's write bit is honoured even
    for root, so a read-only data folder (mode r-x) is never written to."""
    try:
        return path.is_dir() and bool(path.stat().st_mode & stat.S_IWUSR) and os.access(path, os.W_OK | os.X_OK)
    except OSError:
        return False


def default_cache_dir(root: str | Path) -> Path:
    """Where statistics are cached: ``$DABNET_CACHE_DIR`` if set, else ``<root>/.dabnet_cache`` when the
    data folder is writable, else ``$XDG_CACHE_HOME/dabnet`` (default ``~/.cache/dabnet``)."""
    if os.environ.get(_CACHE_ENV):
        return Path(os.environ[_CACHE_ENV])
    root = Path(root)
    if _writable_dir(root):
        return root / ".dabnet_cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dabnet"


def _fingerprint(dataset: SegmentationDataset) -> str:
    """sha256 over the sorted file list with sizes and modification times (ns) plus the label space."""
    rows = []
    for image, label in dataset.samples:
        for path in (image, label):
            if path is None:
                continue
            st = path.stat()
            try:
                name = path.relative_to(dataset.root).as_posix()
            except ValueError:
                name = str(path)
            rows.append((name, st.st_size, st.st_mtime_ns))
    info = dataset.info
    payload = {
        "version": _STATS_VERSION,
        "dataset": info.name,
        "num_classes": info.num_classes,
        "ignore_index": info.ignore_index,
        "files": sorted(rows),
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _cache_file(dataset: SegmentationDataset, cache_dir: Path) -> Path:
    where = hashlib.sha256(str(dataset.root.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"stats-{dataset.info.name}-{dataset.split}-{where}.json"


def compute_statistics(dataset: SegmentationDataset, progress: bool = True) -> dict[str, Any]:
    """Scan ``dataset`` (raw pairs, no transform) without any cache; see :func:`statistics`."""
    info = dataset.info
    if not dataset.has_labels:
        raise DatasetError(f"{info.name} {dataset.split} has no labels: compute statistics on the train split")
    channel_sum = np.zeros(3, dtype=np.float64)
    channel_sq = np.zeros(3, dtype=np.float64)
    pixels = 0
    counts = np.zeros(max(256, info.ignore_index + 1), dtype=np.int64)
    for i in tqdm(
        range(len(dataset)), desc=f"statistics {info.name} {dataset.split}", disable=not progress, unit="img"
    ):
        image, label = dataset.load(i)
        flat = image.reshape(-1, 3).astype(np.float64)
        channel_sum += flat.sum(axis=0)
        channel_sq += np.einsum("ij,ij->j", flat, flat)
        pixels += flat.shape[0]
        counts += np.bincount(label.ravel(), minlength=counts.size)[: counts.size]
    mean = channel_sum / pixels
    std = np.sqrt(np.maximum(channel_sq / pixels - mean**2, 0.0))
    class_counts = counts[: info.num_classes]
    labelled = int(class_counts.sum())
    if labelled == 0:
        raise DatasetError(f"{info.name} {dataset.split} at {dataset.root}: every label pixel is ignored")
    freq = class_counts / labelled
    weights = 1.0 / np.log(CLASS_WEIGHT_C + freq)
    return {
        "dataset": info.name,
        "split": dataset.split,
        "num_images": len(dataset),
        "num_pixels": int(pixels),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "class_counts": class_counts.tolist(),
        "ignored_pixels": int(pixels - labelled),
        "class_frequencies": freq.tolist(),
        "class_weights": weights.tolist(),
    }


def statistics(
    dataset: SegmentationDataset, cache_dir: str | Path | None = None, progress: bool = True, refresh: bool = False
) -> dict[str, Any]:
    """Per-channel ``mean`` and ``std`` (RGB, 0..255, over all pixels), ``class_counts`` and
    ``class_frequencies`` p_c (fractions of the non-ignored pixels, length C), ``class_weights``
    1 / ln(1.10 + p_c), ``num_images``, ``num_pixels``, ``ignored_pixels`` of ``dataset``'s raw pairs.

    The result is cached as JSON in ``cache_dir`` (default :func:`default_cache_dir`), keyed by a hash of
    the file list with sizes and mtimes: any change to the files recomputes it; ``refresh`` forces it.
    The returned dict also holds ``cache_file`` and ``cached`` (True when read from the cache)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.root)
    path = _cache_file(dataset, cache_dir)
    key = _fingerprint(dataset)
    if not refresh and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        if stored.get("key") == key:
            return {**stored["stats"], "cache_file": str(path), "cached": True}
    stats = compute_statistics(dataset, progress=progress)
    try:
        write_text_atomic(path, json.dumps({"key": key, "stats": stats}, indent=1))
    except OSError as exc:
        warnings.warn(f"could not cache statistics in {path}: {exc}", stacklevel=2)
    return {**stats, "cache_file": str(path), "cached": False}


def validate(dataset: SegmentationDataset, progress: bool = True) -> list[str]:
    """Decode every pair of ``dataset`` and return one message per problem (empty list = all good):
    unreadable images or labels, image/label size mismatches, label values outside the class ids and
    ignore index. Each message names the file(s)."""
    problems: list[str] = []
    for image_path, label_path in tqdm(
        dataset.samples, desc=f"validate {dataset.info.name} {dataset.split}", disable=not progress, unit="img"
    ):
        image = label = None
        try:
            image = dataset.read_image(image_path)
        except DatasetError as exc:
            problems.append(str(exc))
        if label_path is not None:
            try:
                label = dataset.read_label(label_path)
            except DatasetError as exc:
                problems.append(str(exc))
        if image is not None and label is not None and label_path is not None:
            try:
                dataset.check_sizes(image, label, image_path, label_path)
            except DatasetError as exc:
                problems.append(str(exc))
    return problems


def check(dataset: SegmentationDataset, progress: bool = True) -> None:
    """Raise one DatasetError listing every problem :func:`validate` finds."""
    problems = validate(dataset, progress=progress)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DatasetError(
            f"{len(problems)} problem(s) in {dataset.info.name} {dataset.split} at {dataset.root}:\n"
            f"{listing}\nFix or replace these files (or re-run `make data`)."
        )
