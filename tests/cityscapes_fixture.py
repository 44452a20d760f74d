"""A tiny generated dataset in the Cityscapes layout (64x128 images) for the tests.

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (test has no gtFine)

Every label map holds random official labelIds (including ids that map to ignore, such as 0 and 1) and,
in its first row, the labelIds of ``KNOWN_PIXELS``; every image's pixel (0, 0) is ``KNOWN_RGB``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

HEIGHT, WIDTH = 64, 128
#: split -> city -> number of frames (train spans two cities)
CITIES = {"train": {"aachen": 2, "bremen": 1}, "val": {"frankfurt": 1}, "test": {"berlin": 1}}
#: (row, col) -> (labelId written to the file, trainId expected after mapping), from the official table
KNOWN_PIXELS = {
    (0, 0): (7, 0),  # road
    (0, 1): (26, 13),  # car
    (0, 2): (0, 255),  # unlabeled -> ignore
    (0, 3): (1, 255),  # ego vehicle -> ignore
    (0, 4): (33, 18),  # bicycle
    (0, 5): (9, 255),  # parking -> ignore
    (0, 6): (23, 10),  # sky
    (0, 7): (24, 11),  # person
    (0, 8): (8, 1),  # sidewalk
}
KNOWN_RGB = (250, 20, 5)
#: labelIds the random part of the maps draws from
RANDOM_IDS = (0, 1, 4, 7, 8, 11, 17, 21, 23, 24, 26, 33)


def make_cityscapes(root: Path) -> Path:
    """Write the tiny dataset under ``root`` and return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(1234)
    for split, cities in CITIES.items():
        for city, frames in cities.items():
            image_dir = root / "leftImg8bit" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            for frame in range(frames):
                stem = f"{city}_{frame:06d}_{19 + frame:06d}"
                image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
                image[0, 0] = KNOWN_RGB
                assert cv2.imwrite(str(image_dir / f"{stem}_leftImg8bit.png"), image[:, :, ::-1])
                if split == "test":
                    continue
                label_dir = root / "gtFine" / split / city
                label_dir.mkdir(parents=True, exist_ok=True)
                label = rng.choice(np.array(RANDOM_IDS, dtype=np.uint8), size=(HEIGHT, WIDTH))
                for (row, col), (label_id, _train_id) in KNOWN_PIXELS.items():
                    label[row, col] = label_id
                assert cv2.imwrite(str(label_dir / f"{stem}_gtFine_labelIds.png"), label)
    return root
