"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class DabnetError(Exception):
    """Base of every error whose message alone tells the user what is wrong and how to fix it."""


class CheckpointError(DabnetError, ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


class DatasetError(DabnetError, ValueError):
    """Missing or malformed data; the message names the file or folder and the fix."""
