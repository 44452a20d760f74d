"""mIoU of inference variants against eager on CamVid-layout val images (the generated tiny copy)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dabnet_lib.deploy.variant_accuracy import variant_miou
from dabnet_lib.evaluation.evaluation import evaluate_checkpoint
from dabnet_lib.model.dabnet import DABNet


@pytest.mark.usefixtures("one_thread")
def test_exact_variant_has_no_drop_and_a_bad_variant_gets_an_error_row(camvid_tiny: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = DABNet(11)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding has something to fold
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "w.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "num_classes": 11,
            "model_config": model.config.to_dict(),
            "dataset": "camvid",
            "mean": [99.63, 103.33, 105.66],
            "std": None,
        },
        path,
    )
    rows = variant_miou(path, camvid_tiny, ("folded", "warp9"), split="val", calibration_count=1, limit=2)
    eager, folded, bad = rows
    reference = evaluate_checkpoint(path, camvid_tiny, "val", progress=False, limit=2)
    assert eager["variant"] == "eager" and eager["miou"] == round(100 * reference["miou"], 2) and eager["images"] == 2
    assert folded["variant"] == "folded" and folded["images"] == 2 and folded["error"] is None
    assert abs(folded["drop"]) < 0.05 and folded["parity"].startswith("ok")
    assert bad["variant"] == "warp9" and bad["miou"] is None and "unknown variant" in bad["error"]
