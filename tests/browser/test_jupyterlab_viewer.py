"""End to end, as a person uses it, in JupyterLab in headless Chromium:

- notebook 05, Run All: the prediction viewer answers the image slider and the layer toggle with new
  pictures, shows a per-image IoU table with numbers, and its layer buttons sit on one row, uncut;
- notebook 03 with a smoke run, Run All: the progress bar shows loss, lr and img/s, and the one live
  figure is updated in place while the run goes.

Run with ``make test-browser`` (installs Debian's chromium when missing, registers the kernel).
Screenshots: artifacts/browser/ (git-ignored); the viewer's own is artifacts/browser/viewer.png.
``DABNET_BROWSER_CHECKPOINT=<file>`` takes the viewer test's pictures from that checkpoint on every
test image (the viewer opens on the median one) instead of a smoke run, and
``DABNET_BROWSER_PICTURE=<png>`` copies the viewer's screenshot there: ``make readme-picture``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lab_harness import parameterised_copy, wait_until
from lab_page import LiveTrainingDriver, NotebookPage, ViewerDriver

from dabnet_lib.workbook.runner import TRAIN_SUBDIR
from dabnet_lib.workbook.viewer import LAYERS

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "05_qualitative_results.ipynb"
TRAINING_NOTEBOOK = REPO / "notebooks" / "03_training.ipynb"
PERCENT = re.compile(r"\d+(?:\.\d+)?\s*%")
CHECKPOINT = os.environ.get("DABNET_BROWSER_CHECKPOINT")  # the viewer's pictures from this checkpoint
PICTURE = os.environ.get("DABNET_BROWSER_PICTURE")  # copy the viewer's screenshot here

# pytest-timeout's limit covers fixtures too (smoke training, server, browser): the 3-minute bound
# (10 minutes when ranking every test image of a given checkpoint).
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600 if CHECKPOINT else 180)]


@pytest.fixture(scope="module")
def smoke_run(workspace: Path, camvid_root: Path) -> Path:
    """A fresh smoke-profile training run on the real CamVid, made with the ``dabnet train`` CLI and
    laid out as notebook 03 leaves it (``<run_dir>/train/``); returns ``run_dir``.

    ``DABNET_BROWSER_RUN_DIR=<run_dir>`` uses an existing run instead (e.g. runs/cpu/camvid, for a
    README screenshot of a trained model)."""
    given = os.environ.get("DABNET_BROWSER_RUN_DIR")
    if CHECKPOINT:
        return workspace / "no_run"  # notebook 05 gets checkpoint=... and needs no run
    if given:
        run_dir = Path(given).resolve()
        if not (run_dir / TRAIN_SUBDIR / "summary.json").is_file():
            pytest.fail(f"DABNET_BROWSER_RUN_DIR={given}: no finished run in {run_dir / TRAIN_SUBDIR}")
        return run_dir
    run_dir = workspace / "smoke_run"
    out = run_dir / TRAIN_SUBDIR
    cmd = [
        sys.executable,
        "-m",
        "dabnet_lib.cli",
        "train",
        "--dataset",
        "camvid",
        "--profile",
        "smoke",
        "--data-root",
        str(camvid_root),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, (
        f"smoke training failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return run_dir


def exercise_viewer(nb: NotebookPage, notebook_rel: str, artifacts: Path, run_timeout: float = 120.0) -> dict[str, Any]:
    """Open ``notebook_rel``, Run All, then drive the viewer; returns what was observed.

    Asserts: the viewer appears with an image shown in its true shape (not stretched); ArrowRight on
    the image slider changes the slider value and the shown image; clicking another layer button
    activates it and changes the image; the IoU table shows percentages throughout; the page asked
    nothing of any host but the server. Screenshots go to ``artifacts``.
    """
    page = nb.page
    nb.open(notebook_rel)
    nb.run_all()
    viewer = ViewerDriver(page)
    viewer.wait(nb, run_timeout)
    first = viewer.digest()
    viewer.screenshot(artifacts / "viewer.png")
    page.screenshot(path=str(artifacts / "01_viewer.png"))
    assert first["bytes"] > 0
    boxes = viewer.layer_boxes()
    assert [b["label"] for b in boxes] == list(LAYERS), boxes
    assert len({round(b["y"]) for b in boxes}) == 1, f"the layer toggle wraps onto a second row: {boxes}"
    assert not any(b["cut"] for b in boxes), f"a layer label is cut: {boxes}"
    assert viewer.distortion() < 0.03, f"the page stretches the viewer image out of shape: {viewer.geometry()}"
    assert PERCENT.search(viewer.iou_text()), f"IoU table shows no percentages: {viewer.iou_text()[:300]!r}"

    # the image slider, by keyboard
    before_value = viewer.slider_value()
    viewer.slider_step("ArrowRight")
    after_slider = viewer.wait_for_new_image(first["sha256"], timeout=60.0)
    page.screenshot(path=str(artifacts / "02_after_slider.png"))
    assert viewer.slider_value() != before_value, "ArrowRight did not move the image slider"
    assert after_slider is not None, "moving the image slider did not change the shown image"
    assert PERCENT.search(viewer.iou_text()), f"IoU table shows no percentages: {viewer.iou_text()[:300]!r}"

    # the layer toggle, by mouse
    layers = viewer.layers()
    inactive = [label for label, active in layers if not active]
    assert len(layers) >= 2 and inactive, f"layer toggle has no other button to click: {layers}"
    target = inactive[0]
    viewer.click_layer(target)
    after_layer = viewer.wait_for_new_image(after_slider["sha256"], timeout=60.0)
    page.screenshot(path=str(artifacts / "03_after_layer.png"))
    assert dict(viewer.layers()).get(target), f"clicking {target!r} did not activate it: {viewer.layers()}"
    assert after_layer is not None, f"switching the layer to {target!r} did not change the shown image"
    assert PERCENT.search(viewer.iou_text()), f"IoU table shows no percentages: {viewer.iou_text()[:300]!r}"
    viewer.screenshot(artifacts / "viewer_after.png")
    assert viewer.distortion() < 0.03, f"the page stretches the viewer image out of shape: {viewer.geometry()}"
    assert not nb.refused, f"the page tried to reach hosts other than the server: {nb.refused[:5]}"
    return {"first": first, "after_slider": after_slider, "after_layer": after_layer, "layer": target}


def test_notebook_05_viewer_responds(
    notebook_page: NotebookPage,
    smoke_run: Path,
    camvid_root: Path,
    workspace: Path,
    kernel_name: str,
    artifacts_dir: Path,
) -> None:
    """Notebook 05 with the smoke parameters: Run All in JupyterLab, then the viewer answers clicks."""
    assert NOTEBOOK.is_file(), f"{NOTEBOOK} is missing"
    params = {
        "dataset": "camvid",
        "data_root": str(camvid_root),
        "profile": "smoke",
        "run_dir": str(smoke_run),
        "reports_dir": str(workspace / "reports"),
        "seed": 0,
    }
    if CHECKPOINT:  # every test image of the given weights; the viewer opens on the median one
        params.update(profile="cpu", checkpoint=str(Path(CHECKPOINT).resolve()))
    copy = parameterised_copy(NOTEBOOK, workspace / NOTEBOOK.name, params, kernel_name)
    seen = exercise_viewer(
        notebook_page, copy.relative_to(REPO).as_posix(), artifacts_dir, run_timeout=540.0 if CHECKPOINT else 120.0
    )
    assert len({seen["first"]["sha256"], seen["after_slider"]["sha256"], seen["after_layer"]["sha256"]}) == 3
    if PICTURE:
        Path(PICTURE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(artifacts_dir / "viewer.png", PICTURE)


@pytest.mark.timeout(300)
def test_notebook_03_shows_live_training_progress(
    notebook_page: NotebookPage, camvid_root: Path, workspace: Path, kernel_name: str, artifacts_dir: Path
) -> None:
    """Notebook 03 with a smoke run of 4 epochs: the bar shows loss, lr and img/s, and one figure is
    redrawn in place (its update counter rises while the run goes; never a second figure)."""
    params = {
        "dataset": "camvid",
        "data_root": str(camvid_root),
        "profile": "smoke",
        "run_dir": str(workspace / "live_run"),
        "reports_dir": str(workspace / "reports"),
        "seed": 0,
        "overrides": {"epochs": 4},
    }
    copy = parameterised_copy(TRAINING_NOTEBOOK, workspace / TRAINING_NOTEBOOK.name, params, kernel_name)
    nb, live = notebook_page, LiveTrainingDriver(notebook_page.page)
    nb.open(copy.relative_to(REPO).as_posix())
    nb.run_all()
    counters: set[int] = set()

    def finished() -> bool:
        counters.update(p["updates"] for p in live.plots())
        # JupyterLab renders only the cells near the viewport (their prompts read ""); the view follows
        # execution, so the run is over when the last rendered prompt is numbered and none is pending
        prompts = [p for p in nb.prompts() if p]
        done = bool(prompts) and re.fullmatch(r"\[\d+\]:", prompts[-1]) and "[*]:" not in prompts
        return bool(nb.errors()) or bool(done)

    wait_until(finished, 240.0, interval=0.2, what="notebook 03 to finish")
    nb.wait_idle(60.0)
    nb.page.screenshot(path=str(artifacts_dir / "04_live_training.png"), full_page=True)
    assert not nb.errors(), nb.errors()[-1][-3000:]
    plots = live.plots()
    assert len(plots) == 1 and plots[0]["loaded"], f"expected one live figure, found {plots}"
    assert plots[0]["updates"] >= 4, plots  # redrawn at every epoch's end
    assert len(counters) >= 2, f"the figure was not seen changing while training ran: {sorted(counters)}"
    text = live.bar_text()
    assert "8/8" in text and all(k in text for k in ("loss=", "lr=", "img/s=")), text
    assert not nb.refused, f"the page tried to reach hosts other than the server: {nb.refused[:5]}"
