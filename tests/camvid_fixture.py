"""A tiny generated dataset in CamVid's SegNet layout (native 360x480) for the tests that need CamVid's
layout and label values but not its content (``make test-fast`` runs without ../shared).

    root/{train,val,test}/<seq>_<frame>.png            RGB images, 360x480
    root/{train,val,test}annot/<seq>_<frame>.png       label maps, class ids 0..10 and 11 = void

No ``camvid_*_list.txt``: the loader scans the folders (the real copy has no lists either). Each label map
is a few horizontal bands of classes (sky above, road below, like a street scene) with blocks of other
classes and void; each image paints a class's palette colour plus noise, so a model can fit it. Every
label's first row holds ``KNOWN_PIXELS`` and every image's pixel (0, 0) is ``KNOWN_RGB``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dabnet_lib.data.datasets import CAMVID

HEIGHT, WIDTH = CAMVID.native_size
#: split -> number of images (the smoke profile takes 8 training and 4 validation images)
SPLIT_SIZES = {"train": 10, "val": 5, "test": 5}
#: (row, col) -> label value written to the file (a class id, or the void index 11)
KNOWN_PIXELS = {(0, 0): 0, (0, 1): 3, (0, 2): CAMVID.ignore_index, (0, 3): 8}
KNOWN_RGB = (250, 20, 5)
#: top-to-bottom bands: sky, building, road
BANDS = (0, 1, 3)


def _label_map(rng: np.random.Generator) -> np.ndarray:
    label = np.empty((HEIGHT, WIDTH), dtype=np.uint8)
    edges = np.linspace(0, HEIGHT, len(BANDS) + 1).astype(int)
    for cls, top, bottom in zip(BANDS, edges[:-1], edges[1:], strict=True):
        label[top:bottom] = cls
    for _ in range(6):  # blocks of the other classes (and void), 20..80 pixels a side
        h, w = rng.integers(20, 81, size=2)
        top, left = rng.integers(0, HEIGHT - h), rng.integers(0, WIDTH - w)
        label[top : top + h, left : left + w] = rng.integers(0, CAMVID.num_classes + 1)
    for (row, col), value in KNOWN_PIXELS.items():
        label[row, col] = value
    return label


def _image(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    palette = CAMVID.palette.astype(np.int16)  # (12, 3) RGB, void included
    noise = rng.integers(-20, 21, size=(HEIGHT, WIDTH, 3), dtype=np.int16)
    image = np.clip(palette[np.minimum(label, len(palette) - 1)] + noise, 0, 255).astype(np.uint8)
    image[0, 0] = KNOWN_RGB
    return image


def make_camvid(root: Path) -> Path:
    """Write the tiny dataset under ``root`` and return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(2019)
    for split, count in SPLIT_SIZES.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"0001TP_{split}_{i:04d}.png"
            label = _label_map(rng)
            assert cv2.imwrite(str(root / f"{split}annot" / name), label)
            assert cv2.imwrite(str(root / split / name), cv2.cvtColor(_image(label, rng), cv2.COLOR_RGB2BGR))
    return root
