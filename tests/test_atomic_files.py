"""atomic_files: a write either lands complete or leaves the previous file untouched, with normal permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dabnet_lib.atomic_files import WriteError, write_atomic, write_bytes_atomic, write_text_atomic
from dabnet_lib.errors import CheckpointError, DabnetError
from dabnet_lib.model.checkpoints import save_checkpoint


def test_write_creates_folders_and_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "table.md"
    write_text_atomic(path, "first")
    write_bytes_atomic(path, "zweite Fassung ü".encode())
    assert path.read_text(encoding="utf-8") == "zweite Fassung ü"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.md"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_get_the_umask_permissions_of_a_normal_file(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.json").st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_previous_file_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_text_atomic(path, "old")

    def half_then_fail(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    with pytest.raises(WriteError, match=f"could not write summary {path}: No space left.*intact") as info:
        write_atomic(path, half_then_fail, what="summary")
    assert isinstance(info.value, DabnetError) and isinstance(info.value, OSError)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_ctrl_c_during_a_write_passes_through_and_leaves_no_temp_file(tmp_path: Path) -> None:
    def interrupted(f: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "x.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_created_is_a_write_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match="could not write file"):
        write_bytes_atomic(tmp_path / "file" / "x.json", b"{}")


def test_checkpoint_failures_stay_checkpoint_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(CheckpointError, match=f"could not save checkpoint {tmp_path / 'file' / 'last.pt'}"):
        save_checkpoint({"epoch": 1}, tmp_path / "file" / "last.pt")
