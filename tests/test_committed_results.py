"""The committed results are reproducible: the published cpu checkpoint re-scores to the committed
test mIoU on the real CamVid test split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dabnet_lib.evaluation.evaluation import evaluate_checkpoint
from dabnet_lib.workbook.runner import REPO_ROOT

CHECKPOINT = REPO_ROOT / "reports" / "checkpoints" / "dabnet_camvid_cpu.pt"
TABLE = REPO_ROOT / "reports" / "evaluation.csv"


@pytest.mark.slow
def test_committed_checkpoint_reproduces_the_committed_test_miou(camvid_root: Path) -> None:
    if not CHECKPOINT.is_file() or not TABLE.is_file():
        pytest.fail(f"committed results missing: {CHECKPOINT} and {TABLE} come from `make run-all PROFILE=cpu`")
    rows = {row["class"]: float(row["IoU %"]) for row in csv.DictReader(TABLE.open())}
    result = evaluate_checkpoint(CHECKPOINT, camvid_root, "test", progress=False)
    assert result["images"] == 233
    # the reports print two decimals: agree to within half of the last one
    assert 100 * result["miou"] == pytest.approx(rows["mIoU (standard)"], abs=0.005)
    assert 100 * result["pixel_accuracy"] == pytest.approx(rows["pixel accuracy"], abs=0.005)
