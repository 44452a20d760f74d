"""Checkpoint files: atomic saves and copies, and the RNG states a training checkpoint carries.

What a training checkpoint holds, and reading one to resume from, is :mod:`dabnet_lib.training.train_state`;
reading weights is :mod:`dabnet_lib.model.dabnet`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic_files import WriteError, write_atomic
from ..errors import CheckpointError


def _save(path: Path, write: Any) -> Path:
    """:func:`~dabnet_lib.atomic_files.write_atomic` with a failure reported as CheckpointError."""
    try:
        return write_atomic(path, write, what="checkpoint")
    except WriteError as exc:
        raise CheckpointError(str(exc).replace("could not write", "could not save", 1)) from exc.__cause__


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    return _save(Path(path), lambda f: torch.save(obj, f))


def copy_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Atomic copy of a checkpoint file (e.g. last.pt -> best.pt) without re-serialising it."""

    def write(f: Any) -> None:
        with open(src, "rb") as fin:
            shutil.copyfileobj(fin, f, 1 << 20)

    return _save(Path(dst), write)


# -- random number generators ---------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
