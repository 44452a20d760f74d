"""The JupyterLab page and the prediction viewer in it, driven as a person would (menus, keys, clicks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lab_harness import LabServer, wait_until

# JavaScript run in the page: the bytes behind an <img> (blob: or data: URL), as SHA-256 hex.
IMAGE_DIGEST_JS = """async (img) => {
    const resp = await fetch(img.currentSrc || img.src);
    const buf = await resp.arrayBuffer();
    const digest = await crypto.subtle.digest('SHA-256', buf);
    return {src: img.src, bytes: buf.byteLength,
            sha256: Array.from(new Uint8Array(digest)).map(b => b.toString(16).padStart(2, '0')).join('')};
}"""


class NotebookPage:
    """A JupyterLab page showing one notebook, driven the way a person would (menus, keys, clicks).

    Args:
        page: a Playwright page; server: the running :class:`LabServer`;
        refused: the list :func:`loopback_only` fills for the page's context.
    """

    def __init__(self, page: Any, server: LabServer, refused: list[str] | None = None) -> None:
        self.page = page
        self.server = server
        self.refused = refused if refused is not None else []

    def open(self, rel_path: str, timeout: float = 120.0) -> None:
        """Open ``rel_path`` (relative to the server root) and wait until its kernel is connected and idle."""
        self.page.goto(self.server.url(f"lab/tree/{rel_path}?reset"))
        self.page.locator(".jp-NotebookPanel").first.wait_for(timeout=timeout * 1000)
        self.wait_idle(timeout)

    def kernel_status(self) -> str:
        """The status bar's kernel text, e.g. ``Python (dabnet workbook) | Idle``."""
        loc = self.page.locator("#jp-main-statusbar .jp-StatusBar-TextItem[title^='Change kernel']")
        return loc.first.inner_text() if loc.count() else ""

    def wait_idle(self, timeout: float) -> None:
        """Wait until the notebook's kernel is connected and idle (toolbar indicator and status bar)."""
        self.page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
            timeout=timeout * 1000
        )
        wait_until(lambda: self.kernel_status().rstrip().endswith("Idle"), timeout, what="kernel status 'Idle'")

    def prompts(self) -> list[str]:
        """Execution prompts of the code cells (``[ ]:``, ``[*]:``, ``[3]:``)."""
        return [t.strip() for t in self.page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]

    def run_all(self, attempts: int = 3) -> None:
        """Run > Run All Cells from the menu bar; checks that execution started (retries the click)."""
        for _ in range(attempts):
            self.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
            self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            try:
                wait_until(lambda: any(p != "[ ]:" for p in self.prompts()), 10.0, what="cells to start running")
                return
            except TimeoutError:
                self.page.keyboard.press("Escape")
        raise TimeoutError(
            f"Run > Run All Cells did not start execution after {attempts} tries "
            f"(kernel status: {self.kernel_status()!r})"
        )

    def errors(self) -> list[str]:
        """Tracebacks shown in output areas (for failure messages)."""
        loc = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        return [t for t in loc.all_inner_texts() if "Traceback (most recent call last)" in t]


class LiveTrainingDriver:
    """The live training view of notebook 03: tqdm's notebook bar and the figure updated in place."""

    BAR = ".jp-OutputArea-output .widget-hprogress"
    PLOT = "img.dabnet-live-plot"  # dabnet_lib.workbook.live_progress.LIVE_PLOT_CLASS

    def __init__(self, page: Any) -> None:
        self.page = page

    def bar_text(self) -> str:
        """The text beside the progress bar (``4/4 [00:03<00:00, ..., loss=..., lr=..., img/s=...]``)."""
        hbox = self.page.locator(f"{self.BAR}").first.locator("xpath=..")
        return " ".join(t.strip() for t in hbox.all_inner_texts())

    def plots(self) -> list[dict[str, Any]]:
        """Every live figure in the page: its update counter and the length of its picture data."""
        return list(
            self.page.locator(self.PLOT).evaluate_all(
                "imgs => imgs.map(i => ({updates: Number(i.dataset.updates), bytes: i.src.length,"
                " loaded: i.complete && i.naturalWidth > 0}))"
            )
        )


class ViewerDriver:
    """The prediction viewer's widgets in the page, found by their ``dabnet-viewer-*`` DOM classes."""

    IMAGE = ".dabnet-viewer-image"
    SLIDER = ".dabnet-viewer-slider"
    LAYER = ".dabnet-viewer-layer"
    IOU = ".dabnet-viewer-iou"

    def __init__(self, page: Any) -> None:
        self.page = page

    def image(self) -> Any:
        """The ``<img>`` element (ipywidgets puts the class on the img itself; accept a wrapper too)."""
        loc = self.page.locator(f"img{self.IMAGE}, {self.IMAGE} img")
        return loc.first

    def wait(self, nb: NotebookPage, timeout: float) -> None:
        """Wait until the viewer's image has loaded pixels; fail at once when a cell shows a traceback.

        Raises AssertionError naming the prompts and the traceback (or the timeout).
        """
        image = self.image()

        def ready() -> str | None:
            if nb.errors():
                return "error"
            if image.count() and image.evaluate("img => img.complete && img.naturalWidth > 0"):
                return "image"
            return None

        try:
            outcome = wait_until(ready, timeout, interval=0.5, what="the viewer image")
        except TimeoutError as exc:
            outcome = str(exc)
        if outcome != "image":
            tracebacks = nb.errors()
            raise AssertionError(
                f"the viewer did not appear ({outcome}); cell prompts: {nb.prompts()}\n"
                + (tracebacks[-1][-3000:] if tracebacks else "no traceback shown")
            )

    def digest(self) -> dict[str, Any]:
        """``{src, bytes, sha256}`` of the image bytes the browser shows now."""
        return dict(self.image().evaluate(IMAGE_DIGEST_JS))

    def wait_for_new_image(self, old_sha: str, timeout: float) -> dict[str, Any] | None:
        """The new digest once the shown image differs from ``old_sha``, or None after ``timeout`` s."""
        try:
            return wait_until(
                lambda: (d := self.digest())["sha256"] != old_sha and d, timeout, what="the viewer image to change"
            )
        except TimeoutError:
            return None

    def geometry(self) -> dict[str, Any]:
        """Displayed box (``cw``, ``ch``), picture size (``nw``, ``nh``) and CSS ``object-fit`` of the image."""
        return dict(
            self.image().evaluate(
                "img => ({cw: img.clientWidth, ch: img.clientHeight, nw: img.naturalWidth, nh: img.naturalHeight,"
                " fit: getComputedStyle(img).objectFit})"
            )
        )

    def distortion(self) -> float:
        """How much the page stretches the picture: |displayed aspect / picture aspect - 1| (0 = true shape).

        ``object-fit: contain`` / ``scale-down`` keep the shape whatever the box, so they count as 0.
        """
        g = self.geometry()
        if g["fit"] in ("contain", "scale-down") or min(g["cw"], g["ch"], g["nw"], g["nh"]) <= 0:
            return 0.0
        return abs((g["cw"] / g["ch"]) / (g["nw"] / g["nh"]) - 1.0)

    def slider_value(self) -> str:
        return str(self.page.locator(f"{self.SLIDER} .noUi-handle").first.get_attribute("aria-valuenow"))

    def slider_step(self, key: str = "ArrowRight") -> None:
        """Focus the image slider's handle and press ``key`` (as a keyboard user would)."""
        handle = self.page.locator(f"{self.SLIDER} .noUi-handle").first
        handle.focus()
        handle.press(key)

    def layers(self) -> list[tuple[str, bool]]:
        """``(label, active)`` of each layer toggle button."""
        buttons = self.page.locator(f"{self.LAYER} button")
        return [(b.inner_text().strip(), "mod-active" in (b.get_attribute("class") or "")) for b in buttons.all()]

    def layer_boxes(self) -> list[dict[str, Any]]:
        """Each layer button's label, bounding box (``x``, ``y``, ``w``, ``h`` in CSS pixels) and whether
        its label is cut (the text needs more width than the button gives it)."""
        return list(
            self.page.locator(f"{self.LAYER} button").evaluate_all(
                "buttons => buttons.map(b => { const r = b.getBoundingClientRect();"
                " const inner = b.querySelector('.widget-label-basic') || b;"
                " return {label: b.innerText.trim(), x: r.x, y: r.y, w: r.width, h: r.height,"
                " cut: inner.scrollWidth > inner.clientWidth + 1 || b.scrollWidth > b.clientWidth + 1}; })"
            )
        )

    def click_layer(self, label: str) -> None:
        self.page.locator(f"{self.LAYER} button", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).click()

    def iou_text(self) -> str:
        return str(self.page.locator(self.IOU).first.inner_text())

    def screenshot(self, path: Path) -> bytes:
        """Screenshot of the whole viewer (``.dabnet-viewer``, else the image) into ``path``."""
        box = self.page.locator(".dabnet-viewer")
        target = box.first if box.count() else self.image()
        return bytes(target.screenshot(path=str(path)))
