"""Bounded host memory for training data: decode a split once into RAM only when it fits a budget.

The decode-once cache (:meth:`SegmentationDataset.cache_in_memory`) makes CamVid (468 pairs of 360x480,
about 0.7 MB decoded each) free to re-read, but Cityscapes train (2,975 pairs of 1024x2048, about 8.4 MB
each, ~25 GB) does not fit most machines, and under DDP every process would hold its own copy. So the
cache is planned against a budget: ``fraction`` (the recipe's ``cache_ram_fraction``) of the memory
available when training starts, shared by the ``local_ranks`` training processes of this machine (each
may use ``fraction * available / local_ranks``: the sum over ranks stays within the budget, never one
full copy per rank beyond it). A split that does not fit is decoded on every access, in the DataLoader
workers (or in-process with ``num_workers=0``), as the official training loop does.

Either path yields the same arrays, and augmentation is seeded per ``(seed, epoch, index)``
(:class:`~dabnet_lib.training.distributed.SeededSamples`), so the sample order, the augmentations, the weights
and exact resume do not depend on which path was taken.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import SegmentationDataset

#: Files whose header is read to estimate a split's decoded size (evenly spread, the largest counts).
SIZE_PROBES = 8


def available_bytes() -> int | None:
    """Host memory available to new allocations without swapping (Linux ``MemAvailable``), in bytes;
    falls back to free physical pages; None where neither is known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def decoded_bytes(dataset: SegmentationDataset) -> int:
    """Estimated RAM of ``dataset`` decoded (uint8 RGB image + uint8 label per sample), in bytes: the
    largest of up to :data:`SIZE_PROBES` evenly spread image headers (no decoding) times the sample count."""
    n = len(dataset)
    probes = sorted({int(i) for i in np.linspace(0, n - 1, min(n, SIZE_PROBES)).round()})
    largest = 0
    for i in probes:
        with Image.open(dataset.samples[i][0]) as image:
            width, height = image.size
        largest = max(largest, height * width * 4)  # 3 bytes of RGB + 1 byte of label per pixel
    return largest * n


@dataclass(frozen=True)
class CachePlan:
    """Whether to decode ``dataset`` once into RAM (``cache``), the estimate (``need_bytes``) and this
    process's share of the budget (``budget_bytes``, None when free memory is unknown), and ``reason``,
    one line for the training log."""

    dataset: SegmentationDataset
    cache: bool
    need_bytes: int
    budget_bytes: int | None
    reason: str

    def apply(self, progress: bool = False) -> SegmentationDataset:
        """Decode the split into RAM when planned so; returns the dataset."""
        return self.dataset.cache_in_memory(progress) if self.cache else self.dataset


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def plan_caches(
    datasets: Sequence[SegmentationDataset | None], fraction: float, local_ranks: int = 1, available: int | None = None
) -> list[CachePlan]:
    """One :class:`CachePlan` per dataset (None entries are skipped), in order: earlier splits (the
    training split first) take their share of the budget before later ones. ``fraction`` in [0, 1] of
    ``available`` bytes (default: :func:`available_bytes` now), split over ``local_ranks`` processes."""
    available = available_bytes() if available is None else available
    ranks = max(1, int(local_ranks))
    left = None if available is None else int(fraction * available / ranks)
    share = f"{fraction:g} of {_gb(available)} available" if available is not None else ""
    if ranks > 1 and available is not None:
        share += f", shared by {ranks} local processes"
    plans = []
    for ds in datasets:
        if ds is None:
            continue
        need = decoded_bytes(ds)
        what = f"{ds.info.name} {ds.split} ({len(ds)} images, ~{_gb(need)} decoded)"
        if fraction <= 0:
            plans.append(CachePlan(ds, False, need, 0, f"{what}: decoded per access (cache_ram_fraction=0)"))
        elif left is None:
            plans.append(
                CachePlan(
                    ds, False, need, None, f"{what}: decoded per access (free host memory unknown on this system)"
                )
            )
        elif need <= left:
            plans.append(
                CachePlan(
                    ds,
                    True,
                    need,
                    left,
                    f"{what}: decoded once into RAM (budget {_gb(left)}: cache_ram_fraction {share})",
                )
            )
            left -= need
        else:
            plans.append(
                CachePlan(
                    ds,
                    False,
                    need,
                    left,
                    f"{what}: decoded per access in the loader, it does not "
                    f"fit the budget of {_gb(left)} (cache_ram_fraction "
                    f"{share}; raise it to cache)",
                )
            )
    return plans
