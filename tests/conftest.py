"""Shared fixtures: the real CamVid copy, generated CamVid- and Cityscapes-layout fixtures, the official
checkpoint fixture. Missing inputs fail loudly (never skip): CI always has ../shared beside us.

A test that reads ../shared (``camvid_root``, ``official_fixture_path``) is marked ``real_data`` here, so
``make test-fast`` (``-m "not slow and not real_data"``) runs without ../shared; tests that need CamVid's
layout but not its content take ``camvid_tiny`` instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# The suite is CPU-only (exact resume is a CPU guarantee, the DDP test runs gloo): hide any GPU from it and
# from the processes it starts, before torch initialises CUDA. `make gpu-check` sets DABNET_GPU_TESTS=1 and
# selects the tests marked `gpu` (deselected by default through pyproject's addopts).
GPU_TESTS = os.environ.get("DABNET_GPU_TESTS") == "1"
if not GPU_TESTS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# E402 on purpose: torch must be imported after CUDA_VISIBLE_DEVICES is set above.
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpu`` fails (never passes or skips) where no CUDA device is visible."""
    if item.get_closest_marker("gpu") is not None and not (GPU_TESTS and torch.cuda.is_available()):
        pytest.fail("this test needs a CUDA device: run `make gpu-check` (or scripts/gpu_check.py) on a GPU machine")


def _camvid_source() -> Path:
    src = Path(os.environ.get("CAMVID_SOURCE") or SHARED / "data" / "camvid").resolve()
    if not (src / "train").is_dir():
        pytest.fail(f"CamVid not found at {src}: set CAMVID_SOURCE to a SegNet-layout CamVid folder")
    return src


#: fixtures that read ../shared: a test using one of them is marked ``real_data``
REAL_DATA_FIXTURES = ("camvid_root", "official_fixture_path")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``real_data`` every test that reads ../shared (directly or through another fixture)."""
    for item in items:
        if any(name in REAL_DATA_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


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
def camvid_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CamVid-layout dataset generated for the tests (see camvid_fixture.py), read-only by convention."""
    from camvid_fixture import make_camvid

    return make_camvid(tmp_path_factory.mktemp("camvid_tiny"))


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Cityscapes-layout dataset generated for the tests (see cityscapes_fixture.py)."""
    from cityscapes_fixture import make_cityscapes

    return make_cityscapes(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small tensors: one thread (two threads collapse when another process holds a core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
