"""Small stand-ins shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FakeInfo:
    """Stand-in with DatasetInfo's fields: 3 classes + void, ignore index 255."""

    palette: np.ndarray = field(
        default_factory=lambda: np.array([[200, 20, 30], [40, 150, 60], [70, 80, 240], [0, 0, 0]], dtype=np.uint8)
    )
    name: str = "fake"
    classes: tuple[str, ...] = ("sky", "road", "car")
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.classes)
