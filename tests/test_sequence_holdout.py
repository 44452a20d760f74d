"""scripts/make_sequence_holdout.py: a CamVid folder whose val is one whole sequence held out of training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dabnet_lib.data.datasets import build_dataset

SCRIPT = "scripts/make_sequence_holdout.py"


def _sequences(root: Path, split: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for image, _ in build_dataset("camvid", root, split).samples:
        seq = Path(image).name.split("_")[0]
        counts[seq] = counts.get(seq, 0) + 1
    return counts


def test_holds_out_0006R0_as_val_and_trains_on_the_rest(camvid_root: Path, tmp_path: Path) -> None:
    dest = tmp_path / "holdout"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--source", str(camvid_root), "--dest", str(dest)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "train 367 frames, val 101 frames of 0006R0" in done.stdout
    assert _sequences(dest, "val") == {"0006R0": 101}
    assert _sequences(dest, "train") == {"0001TP": 62, "0016E5": 305}  # train's 204 + val's 101 of 0016E5
    assert _sequences(dest, "test") == _sequences(camvid_root, "test")  # untouched
    first = build_dataset("camvid", dest, "val").samples[0]
    assert Path(first[0]).resolve().parent == (camvid_root / "train").resolve()  # linked, not copied


def test_unknown_sequence_is_one_clear_error(camvid_root: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, SCRIPT, "--source", str(camvid_root), "--dest", str(tmp_path / "h"), "--hold-out", "Seq9"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "no trainval frame of sequence 'Seq9'" in done.stderr and "0006R0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "h").exists()
