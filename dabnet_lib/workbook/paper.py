"""Figures the DABNet paper (Li & Kim, BMVC 2019) and its official release (github.com/Reagan1311/DABNet) report.

They stand beside our measurements, never blended with them: each carries its setting.
"""

from __future__ import annotations

#: mIoU (%) as published per (dataset, evaluated split), with the setting it was measured in.
PAPER_MIOU: dict[tuple[str, str], dict[str, object]] = {
    ("camvid", "test"): {
        "miou": 66.72,
        "setting": "trained on trainval (468 images), 1000 epochs on a GPU, 233 test images at 360x480",
    },
    ("cityscapes", "test"): {"miou": 70.07, "setting": "trained on train+val, 1000 epochs, test server, 1024x2048"},
    ("cityscapes", "val"): {
        "miou": 69.57,
        "setting": "trained on train only, 1000 epochs, 500 val images at 1024x2048 (the author confirms this is val)",
    },
}

#: Published speed: one GTX 1080Ti, batch 1, 512x1024, including the final x8 upsampling.
PAPER_FPS = {"fps": 104.0, "hardware": "GTX 1080Ti", "input": (512, 1024), "batch": 1}


def paper_miou(dataset: str, split: str) -> dict[str, object] | None:
    """The published mIoU (%) and its setting for ``dataset`` evaluated on ``split``; None where the paper
    gives no figure for that split (e.g. CamVid val)."""
    return PAPER_MIOU.get((dataset, split))


#: Parameters of the published network (19 classes).
PAPER_PARAMS = 756_643

#: The paper's ablation tables could not be retrieved; the one figure known is below.
PAPER_ABLATION_NOTE = (
    "The paper's ablation tables (Cityscapes val) could not be retrieved; its only known figure is 69.1 mIoU for "
    "'DABNet-baseline' on Cityscapes val (train only, 1000 epochs, GPU): a different dataset and budget, so no row "
    "of ours has a paper figure beside it."
)
