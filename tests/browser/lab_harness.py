"""Helpers for the browser tests: a JupyterLab server on loopback, headless Chromium, notebook copies.

Everything here is loopback-only and cleans up after itself: the server runs in its own process
group (killed as a group on exit, also on failure) with Jupyter's config, data, runtime, settings
and workspace folders redirected into a temporary folder, so the user's home is neither read nor
written; the browser refuses every request that is not for the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Flags for Debian's Chromium on a machine with a closed network (no background fetches, no GPU).
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabServer:
    """``jupyter lab`` on 127.0.0.1 with a random token; use as a context manager.

    Args:
        root_dir: the server's root (notebook paths in URLs are relative to it).
        state_dir: empty folder for Jupyter's config/data/runtime/settings/workspaces and the log.
        startup_timeout: seconds to wait for ``/api/status`` before failing.
    """

    def __init__(self, root_dir: Path, state_dir: Path, startup_timeout: float = 90.0) -> None:
        self.root_dir = Path(root_dir).resolve()
        self.state_dir = Path(state_dir).resolve()
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.state_dir / "jupyterlab.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """Environment of the server (and its kernels): Jupyter's per-user folders in ``state_dir``.

        The kernel spec of the project lives in ``.venv`` (``make kernel``, ``--sys-prefix``), which
        stays on Jupyter's search path; only per-user folders are redirected.
        """
        env = dict(os.environ)
        for var, sub in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTERLAB_SETTINGS_DIR", "settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
            ("IPYTHONDIR", "ipython"),
        ):
            path = self.state_dir / sub
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        # no "get notified about Jupyter news?" toast over the page
        labconfig = self.state_dir / "config" / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
        )
        env["JUPYTER_TOKEN"] = self.token  # IdentityProvider.token; kept out of the process list
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def command(self) -> list[str]:
        root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        return [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False",
            # no network: no news feed, no update check, no extension listing from PyPI
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--ServerApp.terminals_enabled=False",
            *root,
        ]

    def start(self) -> None:
        """Start the server in its own process group (returns at once; see :meth:`wait_ready`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # the child holds its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.root_dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def api(self, path: str, timeout: float = 5.0) -> Any:
        """GET ``/api/<path>`` with the token; returns the decoded JSON."""
        req = urllib.request.Request(f"{self.base_url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def wait_ready(self) -> None:
        """Block until ``/api/status`` answers; raise with the log's tail if the server died or hung."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("status", timeout=2.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(0.25)
        raise RuntimeError(
            f"jupyter lab did not answer on {self.base_url} within {self.startup_timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group (server and kernels), SIGKILL what is left after ``grace`` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        pgid = proc.pid  # start_new_session: the group id is the server's pid
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        _signal_group(pgid, signal.SIGKILL)  # kernels may outlive a server that exited
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)

    def url(self, path: str) -> str:
        """Browser URL of ``path`` (e.g. ``lab/tree/x.ipynb``) carrying the token."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def __enter__(self) -> LabServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def launch_chromium(playwright: Any, extra_args: Sequence[str] = ()) -> Any:
    """Headless Debian Chromium via Playwright (Playwright gives it a fresh, empty profile folder)."""
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} not found: run scripts/ensure_chromium.sh (or set CHROMIUM)")
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_ARGS, *extra_args],
    )


def loopback_only(context: Any, base_url: str) -> list[str]:
    """Abort every request of ``context`` that does not go to ``base_url``; returns the list of
    refused URLs (filled as the page runs) so a test can show what was blocked."""
    refused: list[str] = []

    def handle(route: Any) -> None:
        url = route.request.url
        if url.startswith(base_url + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    context.route("**/*", handle)
    return refused


def parameterised_copy(
    source: Path, dest: Path, parameters: Mapping[str, Any], kernel_name: str, extra_cells: Sequence[str] = ()
) -> Path:
    """Copy ``source`` to ``dest`` with its ``parameters``-tagged cell's assignments replaced by
    ``parameters`` (the other lines kept), the kernel set to ``kernel_name`` and outputs cleared.

    ``extra_cells`` (code) are appended at the end. Raises ValueError when there is no parameters cell
    or a parameter is not assigned in it (a notebook that changed its contract should fail loudly).
    """
    nb = nbformat.read(source, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{source}: expected exactly one code cell tagged 'parameters', found {len(cells)}")
    cell = cells[0]
    lines = cell.source.splitlines()
    for name, value in parameters.items():
        pattern = re.compile(rf"^{re.escape(name)}\s*(:[^=]*)?=")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        if not hits:
            raise ValueError(f"{source}: parameter {name!r} is not assigned in the parameters cell")
        for i in hits:
            lines[i] = f"{name} = {value!r}"
    cell.source = "\n".join(lines)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
            c.execution_count = None
    for code in extra_cells:
        nb.cells.append(nbformat.v4.new_code_cell(code))
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": kernel_name, "language": "python"}
    nb.metadata.pop("widgets", None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, dest)
    return dest


def wait_until(predicate: Any, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
