"""Figures the DABNet paper and its official release report (../shared/paper/dabnet_tables.md).

They stand beside our measurements, never blended with them: each carries its setting.
"""

from __future__ import annotations

#: Test-set mIoU (%) as published, with the setting it was measured in.
PAPER_TEST_MIOU: dict[str, dict[str, object]] = {
    "camvid": {"miou": 66.72, "setting": "trained on trainval (468 images), 1000 epochs on a GPU, 233 test images at 360x480"},
    "cityscapes": {"miou": 70.07, "setting": "trained on train+val, 1000 epochs, test server, 1024x2048"},
}
#: Cityscapes val mIoU (%), trained on train only (the author confirms this is val).
PAPER_CITYSCAPES_VAL_MIOU = 69.57

#: Published speed: one GTX 1080Ti, batch 1, 512x1024, including the final x8 upsampling.
PAPER_FPS = {"fps": 104.0, "hardware": "GTX 1080Ti", "input": (512, 1024), "batch": 1}

#: Parameters of the published network (19 classes).
PAPER_PARAMS = 756_643

#: The paper's ablation tables could not be retrieved; the one figure known is below.
PAPER_ABLATION_NOTE = (
    "The paper's ablation tables (Cityscapes val) could not be retrieved; its only known figure is 69.1 mIoU for "
    "'DABNet-baseline' on Cityscapes val (train only, 1000 epochs, GPU): a different dataset and budget, so no row "
    "of ours has a paper figure beside it."
)
