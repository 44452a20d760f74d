"""`dabnet test` and `dabnet predict`: JSON output, help, bad checkpoints and data (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dabnet_lib.cli import main
from dabnet_lib.data.datasets import CAMVID
from dabnet_lib.model.dabnet import DABNet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random DABNet(11) checkpoint with the contract keys."""
    torch.manual_seed(0)
    model = DABNet(11)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "num_classes": 11,
            "model_config": model.config.to_dict(),
            "dataset": "camvid",
            "mean": list(CAMVID.official_mean),
            "std": None,
            "epoch": 4,
            "iteration": 40,
            "optimizer": {},
            "scheduler": {},
            "scaler": None,
            "rng": {},
            "recipe": {},
            "metrics": [],
        },
        path,
    )
    return path


def test_test_json_prints_one_object(checkpoint: Path, camvid_tiny: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "res" / "eval.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dabnet_lib.cli",
            "test",
            "--checkpoint",
            str(checkpoint),
            "--data-root",
            str(camvid_tiny),
            "--limit",
            "2",
            "--scale",
            "0.5",
            "--device",
            "cpu",
            "--json",
            "--out",
            str(out_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert isinstance(payload, dict)
    for key in ("miou", "official_miou", "pixel_accuracy", "iou", "split", "images", "checkpoint", "metric_share"):
        assert key in payload
    assert payload["split"] == "test" and payload["images"] == 2 and payload["dataset"] == "camvid"
    assert payload["checkpoint"] == str(checkpoint) and payload["epoch"] == 4
    assert set(payload["iou"]) == set(CAMVID.classes)
    assert 0.0 <= payload["miou"] <= 1.0 and 0.0 <= payload["metric_share"] < 1.0
    assert json.loads(out_file.read_text()) == payload


def test_test_text_report(checkpoint: Path, camvid_tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "test",
            "--checkpoint",
            str(checkpoint),
            "--data-root",
            str(camvid_tiny),
            "--limit",
            "1",
            "--scale",
            "0.5",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for text in ("Sky", "Bicyclist", "mIoU", "official mIoU", "pixel accuracy", "metric updates"):
        assert text in out


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("test", ("--checkpoint", "--best-of-last", "--json", "--scale", "--batch-size", "--split")),
        ("predict", ("--checkpoint", "--input", "--split", "--out", "--cityscapes-submission")),
    ],
)
def test_help(command: str, flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "-h"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags)


def _fails_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    for needle in needles:
        assert needle in lines[0]


def test_bad_checkpoints_exit_2(
    checkpoint: Path, camvid_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--data-root", str(camvid_tiny), "--device", "cpu", "--quiet"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    _fails_with_one_line(["test", "--checkpoint", str(truncated), *base], capsys, "truncated.pt", "corrupt")
    _fails_with_one_line(["test", "--checkpoint", str(tmp_path / "missing.pt"), *base], capsys, "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello")
    _fails_with_one_line(["test", "--checkpoint", str(garbage), *base], capsys, "garbage.pt")
    wrong = tmp_path / "c19.pt"
    torch.save({"model": DABNet(19).state_dict(), "num_classes": 19, "dataset": "camvid"}, wrong)
    _fails_with_one_line(["test", "--checkpoint", str(wrong), *base], capsys, "c19.pt", "19 classes")
    _fails_with_one_line(
        ["test", "--checkpoint", str(checkpoint), "--dataset", "cityscapes", *base], capsys, "11 classes"
    )
    _fails_with_one_line(
        ["predict", "--checkpoint", str(truncated), "--input", str(tmp_path), "--out", str(tmp_path / "o")],
        capsys,
        "truncated.pt",
    )


def test_missing_data_exit_2(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_with_one_line(
        [
            "test",
            "--checkpoint",
            str(checkpoint),
            "--data-root",
            str(tmp_path / "nodata"),
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
        "nodata",
    )
    _fails_with_one_line(
        ["test", "--checkpoint", str(tmp_path), "--best-of-last", "3", "--quiet"], capsys, "epoch_XXXX"
    )
    _fails_with_one_line(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "nothing",
    )


def test_predict_folder_and_submission_guard(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(src / "x.jpg"), image)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(src),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0 and "wrote 1 label PNGs" in capsys.readouterr().out
    for kind in ("label", "color", "overlay"):
        assert cv2.imread(str(out / kind / "x.png"), cv2.IMREAD_UNCHANGED).shape[:2] == (48, 64)
    _fails_with_one_line(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(src),
            "--out",
            str(tmp_path / "sub"),
            "--cityscapes-submission",
            "--quiet",
        ],
        capsys,
        "Cityscapes",
    )
    with pytest.raises(SystemExit) as exc:  # --split and --input are exclusive
        main(["predict", "--checkpoint", str(checkpoint), "--input", str(src), "--split", "test", "--out", "o"])
    assert exc.value.code == 2


def test_an_unknown_split_is_refused_with_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["test", "--checkpoint", "x.pt", "--split", "testing"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'testing'" in err and "'trainval'" in err
