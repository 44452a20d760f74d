"""Fixtures of the browser tests: the project's kernel, a JupyterLab server and headless Chromium.

The server and the browser are always shut down (fixture finalisers), also when a test fails; the
server's log and the screenshots are kept under artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_harness import LabServer, launch_chromium, loopback_only
from lab_page import NotebookPage
from playwright.sync_api import Error as PlaywrightError

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
# Scratch folder inside the server's root (git-ignored): notebook copies and the smoke run.
WORKSPACE = REPO / "runs" / "browser"


@pytest.fixture(scope="session")
def kernel_name() -> str:
    """The project's named kernel; fails with the fix when ``make kernel`` has not registered it."""
    from jupyter_client.kernelspec import KernelSpecManager

    from dabnet_lib.workbook.runner import KERNEL_NAME

    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL_NAME not in specs:
        pytest.fail(f"Jupyter kernel {KERNEL_NAME!r} is not registered (found: {sorted(specs)}): run `make kernel`")
    return KERNEL_NAME


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """artifacts/browser/, emptied at the start of the session."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def workspace() -> Iterator[Path]:
    """A fresh folder under runs/browser/ (inside the server's root, git-ignored), removed afterwards."""
    WORKSPACE.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="session-", dir=WORKSPACE))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_server(kernel_name: str, artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """JupyterLab on a free loopback port with a random token, rooted at the repository."""
    server = LabServer(REPO, tmp_path_factory.mktemp("jupyter"))
    try:
        with server:
            yield server
    finally:
        if server.log_path.exists():
            shutil.copy(server.log_path, artifacts_dir / "jupyterlab.log")


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (sync API)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def notebook_page(
    chromium: object, lab_server: LabServer, artifacts_dir: Path, request: pytest.FixtureRequest
) -> Iterator[NotebookPage]:
    """A fresh browser context and page that can reach only the server (``.refused`` lists what it
    tried beyond it); a failing test leaves artifacts/browser/<test>-failure.png."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1100})  # type: ignore[attr-defined]
    refused = loopback_only(context, lab_server.base_url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield NotebookPage(page, lab_server, refused)
    finally:
        if getattr(request.node, "rep_call_failed", False):
            # The page may be gone (playwright raises its Error); the screenshot is only a courtesy.
            with contextlib.suppress(PlaywrightError):
                page.screenshot(path=str(artifacts_dir / f"{request.node.name}-failure.png"), full_page=True)
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Remember a failed test body so ``notebook_page`` can screenshot the page before closing it."""
    report = yield
    if report.when == "call" and report.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
    return report
