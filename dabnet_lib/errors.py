"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class DabnetError(Exception):
    """Base of every error whose message alone tells the user what is wrong and how to fix it."""


class CheckpointError(DabnetError, ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


class DatasetError(DabnetError, ValueError):
    """Missing or malformed data; the message names the file or folder and the fix."""


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of ``str(exc)`` (at most ``limit`` characters), or the exception's type
    name when its message is empty: safe to put in a one-line user message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
