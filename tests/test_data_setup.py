"""dabnet_lib.data.data_setup (`make data`): link/copy a source folder, validate it, clear errors and exit 2.

Every source here is a temporary folder of symlinks into the real CamVid; nothing is written there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from dabnet_lib.data import data_setup
from dabnet_lib.data.data_setup import main, validate_camvid
from dabnet_lib.data.datasets import CamVid

REPO = Path(__file__).resolve().parents[1]


def camvid_view(source: Path, dest: Path, per_split: int | None = None) -> Path:
    """SegNet-layout folder of symlinks to the real files (all of them, or the first ``per_split``)."""
    for split in ("train", "val", "test"):
        for folder in (split, f"{split}annot"):
            (dest / folder).mkdir(parents=True)
            for path in sorted((source / folder).glob("*.png"))[:per_split]:
                (dest / folder / path.name).symlink_to(path.resolve())
    return dest


def test_link_source_validate_and_rerun(camvid_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = camvid_view(camvid_root, tmp_path / "source")
    dest = tmp_path / "data" / "camvid"
    assert main(["camvid", "--dest", str(dest), "--source", str(source)]) == 0
    assert dest.is_symlink() and dest.resolve() == source.resolve()
    out = capsys.readouterr().out
    assert "linking" in out and "train 367, val 101, test 233 image-label pairs" in out
    assert len(CamVid(dest, "trainval")) == 468
    # idempotent: nothing to do the second time, and also fine without --source
    assert main(["camvid", "--dest", str(dest), "--source", str(source)]) == 0
    assert "already links" in capsys.readouterr().out
    assert main(["camvid", "--dest", str(dest)]) == 0
    assert "exists: validating" in capsys.readouterr().out
    assert dest.resolve() == source.resolve()


def test_broken_source_lists_every_problem(camvid_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = camvid_view(camvid_root, tmp_path / "source")
    labels = sorted((source / "trainannot").iterdir())
    labels[0].unlink()  # image without label
    small = cv2.resize(cv2.imread(str(labels[1]), cv2.IMREAD_UNCHANGED), (240, 180), interpolation=cv2.INTER_NEAREST)
    labels[1].unlink()
    cv2.imwrite(str(labels[1]), small)  # size mismatch
    val_image = sorted((source / "val").iterdir())[0]
    val_image.unlink()  # label without image
    (source / "val" / "junk.png").write_bytes(b"garbage")  # unreadable
    (source / "valannot" / "junk.png").write_bytes(b"garbage")
    for path in (source / "testannot").iterdir():
        path.unlink()
    (source / "testannot").rmdir()  # missing folder
    dest = tmp_path / "data" / "camvid"
    assert main(["camvid", "--dest", str(dest), "--source", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: camvid at ") and "Traceback" not in err
    for expected in (
        f"train: 1 image(s) without a label in {source / 'trainannot'}: {labels[0].name}",
        "train: found 367 images",
        f"label {labels[1]} is 240x180",
        f"val: 1 label(s) without an image in {source / 'val'}: {val_image.name}",
        f"cannot read image {source / 'val' / 'junk.png'}",
        f"cannot read label {source / 'valannot' / 'junk.png'}",
        f"missing folder(s) {source / 'testannot'}",
        "make data",
    ):
        assert expected in err, expected
    assert not dest.exists() and not dest.is_symlink()  # nothing placed before the source validates


def test_command_line_exit_code_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dabnet_lib.data.data_setup",
            "camvid",
            "--dest",
            str(tmp_path / "d"),
            "--source",
            str(empty),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: camvid at ") and "Traceback" not in result.stderr
    assert f"missing folder(s) {empty / 'train'}, {empty / 'trainannot'}" in result.stderr


def test_copy_and_full_validation(
    camvid_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(data_setup, "CAMVID_SPLIT_SIZES", {"train": 2, "val": 1, "test": 1})
    source = camvid_view(camvid_root, tmp_path / "source", per_split=2)
    for extra in ("val", "valannot", "test", "testannot"):
        sorted((source / extra).iterdir())[1].unlink()
    dest = tmp_path / "copied"
    assert main(["camvid", "--dest", str(dest), "--source", str(source), "--copy", "--quiet"]) == 0
    files = sorted((dest / "train").iterdir())
    assert not dest.is_symlink() and len(files) == 2 and not any(f.is_symlink() for f in files)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    # a label with out-of-range values passes the header check but not --full
    label = sorted((dest / "trainannot").iterdir())[0]
    bad = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    bad[:2, :2] = 99
    cv2.imwrite(str(label), bad)
    capsys.readouterr()
    assert validate_camvid(dest) == []
    assert main(["camvid", "--dest", str(dest), "--full", "--quiet"]) == 2
    assert f"label {label} holds invalid values 99" in capsys.readouterr().err


def test_clone_path_and_bad_destinations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(data_setup.shutil, "which", lambda _name: None)  # no git: never touches the network
    assert main(["camvid", "--dest", str(tmp_path / "camvid")]) == 2
    assert "git is not installed" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "gone")
    assert main(["camvid", "--dest", str(broken)]) == 2
    assert f"{broken} is a broken link" in capsys.readouterr().err
    assert main(["cityscapes", "--dest", str(tmp_path / "cs")]) == 2
    assert "cityscapes-dataset.com" in capsys.readouterr().err


def test_cityscapes_source(cityscapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dest = tmp_path / "cityscapes"
    assert main(["cityscapes", "--dest", str(dest), "--source", str(cityscapes_root)]) == 0
    assert dest.resolve() == cityscapes_root.resolve()
    assert "cityscapes ready" in (out := capsys.readouterr().out) and "(train 3, val 1 image-label pairs)" in out
    assert main(["cityscapes", "--dest", str(tmp_path / "x"), "--source", str(tmp_path / "cityscapes" / "gtFine")]) == 2
    assert "leftImg8bit" in capsys.readouterr().err
