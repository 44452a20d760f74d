"""Shared fixtures: the real CamVid copy, a generated Cityscapes-layout fixture, the official
checkpoint fixture. Missing inputs fail loudly (never skip): CI always has ../shared beside us."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _camvid_source() -> Path:
    src = Path(os.environ.get("CAMVID_SOURCE") or SHARED / "data" / "camvid").resolve()
    if not (src / "train").is_dir():
        pytest.fail(f"CamVid not found at {src}: set CAMVID_SOURCE to a SegNet-layout CamVid folder")
    return src


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid (SegNet layout), read-only."""
    return _camvid_source()


@pytest.fixture(scope="session")
def official_fixture_path() -> Path:
    path = SHARED / "fixtures" / "official_dabnet_11cls.pt"
    if not path.is_file():
        pytest.fail(f"missing reference fixture {path} (../shared/fixtures must sit beside the repo)")
    return path


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Cityscapes-layout dataset generated for the tests (see cityscapes_fixture.py)."""
    from cityscapes_fixture import make_cityscapes

    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Small tensors: one thread (two threads collapse when another process holds a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
