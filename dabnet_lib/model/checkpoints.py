"""Training checkpoints: atomic saves, RNG capture/restore, and reading a checkpoint to resume from.

A training checkpoint is a dict with the keys of :data:`RESUME_KEYS` plus ``model`` (state dict with
the official key names), ``num_classes``, ``model_config``, ``dataset``, ``mean``, ``std``,
``recipe`` and ``metrics``; everything in it loads with ``torch.load(weights_only=True)``.
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
from .dabnet import read_checkpoint

#: Keys a checkpoint needs so that training can continue from it exactly.
RESUME_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "recipe",
    "epoch",
    "iteration",
    "position",
    "metrics",
    "elapsed_s",
)


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


#: What :func:`publish_weights` keeps: enough to evaluate, predict and report, not to resume.
PUBLISH_KEYS = (
    "model",
    "num_classes",
    "model_config",
    "dataset",
    "mean",
    "std",
    "epoch",
    "iteration",
    "recipe",
    "metrics",
    "elapsed_s",
    "val_seen",
    "world_size",
    "hardware",
    "training_choice",
)


def publish_weights(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write a small copy of a training checkpoint (about 3 MB instead of 9: no optimizer, scheduler or
    RNG state) for committing or sharing; it loads with ``build_from_checkpoint`` and ``dabnet test``."""
    ckpt = read_checkpoint(src)
    return save_checkpoint({k: ckpt[k] for k in PUBLISH_KEYS if k in ckpt}, dst)


# -- reading --------------------------------------------------------------------------------------


def load_for_resume(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint to resume from; CheckpointError naming the file when it is missing,
    corrupt or truncated, or lacks the training state (e.g. an official weights-only file)."""
    ckpt = read_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: cannot resume from it, it lacks {', '.join(missing)} (only checkpoints written "
            "by `dabnet train` hold the optimizer, scheduler and RNG state; start a new run instead)"
        )
    return ckpt


#: Recipe fields that must not change when a run is resumed (they define the run's sample stream and model).
RESUME_FIXED = ("dataset", "train_split", "model_config", "optimizer", "batch_size", "seed", "max_images")


def check_resumable(ckpt: dict[str, Any], recipe: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """CheckpointError naming the field when ``recipe`` (a Recipe.to_dict()) differs from the checkpoint's
    recipe in a field of :data:`RESUME_FIXED`; other fields (epochs, minutes, val_every, ...) may change."""
    old = ckpt["recipe"]
    for name in RESUME_FIXED:
        if old.get(name) != recipe[name]:
            raise CheckpointError(
                f"checkpoint {path}: it was trained with {name}={old.get(name)!r}, the recipe has "
                f"{recipe[name]!r}: resume with the same {name} or use a new --out folder"
            )
