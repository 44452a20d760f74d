"""DDP: ``torchrun --nproc_per_node=2 -m dabnet_lib.cli train`` on gloo ends with identical weights on both
ranks, rank 0 alone writes the run, and validation merges the ranks' confusion matrices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dabnet_lib.evaluation.evaluation import evaluate_checkpoint
from dabnet_lib.model.dabnet import build_from_checkpoint
from dabnet_lib.training.distributed import weights_digest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_gloo_run(camvid_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "DABNET_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dabnet_lib.cli",
        "train",
        "--profile",
        "smoke",
        "--data-root",
        str(camvid_root),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "save_every=0",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("train camvid/smoke") == 1  # only rank 0 logs

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["stopped_by"] == "epochs"
    digests = summary["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    model, ckpt = build_from_checkpoint(out / "last.pt")
    assert weights_digest(model) == digests[0]
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == summary["iterations"] == 4  # 8 images / (2 x 2) x 2

    # The merged validation of the 4 val images (2 per rank) equals a single-process evaluation of the saved
    # weights: the same labelled pixels (exact) and the same scores (the tolerance only absorbs argmax
    # flips from float rounding, as the rank processes run 1 thread each).
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    result = evaluate_checkpoint(out / "last.pt", camvid_root, split="val", limit=4, progress=False)
    assert rows[-1]["val_pixels"] == int(result["confusion"].sum())
    assert rows[-1]["val_miou"] == pytest.approx(result["miou"], abs=1e-3)
    assert rows[-1]["val_pixel_accuracy"] == pytest.approx(result["pixel_accuracy"], abs=1e-3)
