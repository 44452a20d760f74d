"""Atomic file writes: a file is either its complete new content or untouched, never half-written.

Every writer of the package (checkpoints, recipe and summary JSON, reports, caches, exports) goes
through :func:`write_atomic`: the content goes to a temporary file beside the target, is flushed and
fsynced, renamed over the target with ``os.replace`` and the folder entry is fsynced. The new file
gets the permissions of any normal file (0666 minus the process umask, applied by the kernel).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import DabnetError


class WriteError(DabnetError, OSError):
    """A file that could not be written; the message names it. The previous file, if any, is intact."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temp file in ``path``'s folder (mode 0666 & ~umask) and its path."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """Run ``write(binary file object)`` into a temp file beside ``path``, fsync, then rename it over
    ``path``. On any failure the temp file is removed, ``path`` is untouched and :class:`WriteError`
    ("could not write <what> <path>: ...") is raised; Ctrl-C and SystemExit pass through unchanged."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise WriteError(f"could not write {what} {path}: {exc} (the previous file, if any, is intact)") from exc
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomic write of ``data`` to ``path`` (JSON, CSV, Markdown, figures, exported models)."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Atomic write of ``text`` as UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))
