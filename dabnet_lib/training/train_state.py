"""A training checkpoint: :class:`TrainState` has one field per key that ``last.pt`` holds (the one list of
checkpoint keys), saves itself (:meth:`TrainState.checkpoint`) and continues from a saved one
(:meth:`TrainState.restore`); reading a checkpoint to resume from; publishing its weights.

Every key is saved. :data:`RESUME_KEYS` must be present to resume (a checkpoint of an older version may
lack the others: they keep their defaults); :data:`PUBLISH_KEYS` are what :func:`publish_weights` keeps.
Everything in a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..model.checkpoints import capture_rng, restore_rng, save_checkpoint
from ..model.dabnet import load_weights, read_checkpoint
from .recipes import Recipe
from .schedule import WarmupPolyLR

# What a key is for (a field's metadata): needed to resume, kept by publish_weights.
_RESUME = {"resume": True, "publish": False}
_PUBLISH = {"resume": False, "publish": True}
_BOTH = {"resume": True, "publish": True}
_NEITHER = {"resume": False, "publish": False}


def new_epoch_totals() -> dict[str, float]:
    """Sums over the current epoch's steps: losses of applied steps, their count, images, seconds, skipped."""
    return {"loss_sum": 0.0, "loss_n": 0, "images": 0, "train_s": 0.0, "skipped": 0}


@dataclass(kw_only=True, eq=False)
class TrainState:
    """Everything a training checkpoint holds, in the order it is saved. The live model, optimizer, scheduler
    and scaler are saved as their state dicts; ``rng`` is captured on every save."""

    # needed to resume, with the weights, exactly
    model: nn.Module = field(metadata=_BOTH)  # the network itself (not a DDP or torch.compile wrapper)
    optimizer: torch.optim.Optimizer = field(metadata=_RESUME)
    scheduler: WarmupPolyLR = field(metadata=_RESUME)
    scaler: torch.amp.GradScaler = field(metadata=_RESUME)
    rng: dict[str, Any] | None = field(default=None, metadata=_RESUME)  # Python, numpy, torch (, CUDA) RNGs
    recipe: dict[str, Any] = field(metadata=_BOTH)
    epoch: int = field(default=0, metadata=_BOTH)  # completed epochs
    iteration: int = field(default=0, metadata=_BOTH)  # optimisation steps done (1 per batch)
    position: int = field(default=0, metadata=_RESUME)  # steps done inside the current epoch
    metrics: list[dict[str, Any]] = field(default_factory=list, metadata=_BOTH)  # the metrics.jsonl rows
    elapsed_s: float = field(default=0.0, metadata=_BOTH)  # training wall time over all sessions
    # what the weights are (with model: what evaluation and prediction read)
    num_classes: int = field(metadata=_PUBLISH)
    model_config: dict[str, Any] = field(metadata=_PUBLISH)
    dataset: str = field(metadata=_PUBLISH)
    mean: list[float] = field(metadata=_PUBLISH)  # RGB, 0..255
    std: list[float] | None = field(metadata=_PUBLISH)
    # progress an older checkpoint may lack
    stage: int | None = field(default=None, metadata=_NEITHER)  # resolution stage 0 or 1 (None: not started)
    epoch_acc: dict[str, float] = field(default_factory=new_epoch_totals, metadata=_NEITHER)  # epoch so far
    best_val_miou: float | None = field(default=None, metadata=_NEITHER)
    aux_head: nn.Module | None = field(default=None, metadata=_NEITHER)  # recipe aux_weight > 0 (deep_supervision)
    # provenance
    val_seen: bool = field(metadata=_PUBLISH)  # the training split holds the val images
    world_size: int = field(metadata=_PUBLISH)
    training_choice: dict[str, Any] = field(metadata=_PUBLISH)
    hardware: str = field(metadata=_PUBLISH)

    def checkpoint(self) -> dict[str, Any]:
        """The dict that ``last.pt`` holds: the live objects' state dicts, the RNG states now, the rest."""
        self.rng = capture_rng()
        saved = {key: getattr(self, key) for key in CHECKPOINT_KEYS}
        for key in ("model", "optimizer", "scheduler", "scaler", "aux_head"):
            saved[key] = None if saved[key] is None else saved[key].state_dict()
        saved["epoch_acc"] = dict(self.epoch_acc)
        return saved

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt`` (a :func:`load_for_resume` dict): weights, optimizer, scheduler, the scaler
        (when enabled and saved), RNG states and progress. Fields that describe the run (recipe, mean,
        training_choice, ...) keep this session's values."""
        load_weights(self.model, ckpt)
        if self.aux_head is not None:  # check_resumable refused a checkpoint trained without one
            self.aux_head.load_state_dict(ckpt["aux_head"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.rng = ckpt["rng"]
        restore_rng(ckpt["rng"])
        self.epoch, self.iteration, self.position = int(ckpt["epoch"]), int(ckpt["iteration"]), int(ckpt["position"])
        self.stage, self.elapsed_s, self.metrics = ckpt.get("stage"), float(ckpt["elapsed_s"]), list(ckpt["metrics"])
        self.epoch_acc = dict(ckpt.get("epoch_acc") or new_epoch_totals())
        self.best_val_miou = ckpt.get("best_val_miou")


#: Every key of a training checkpoint, in the order saved.
CHECKPOINT_KEYS = tuple(f.name for f in fields(TrainState))
#: Keys a checkpoint needs so that training can continue from it exactly.
RESUME_KEYS = tuple(f.name for f in fields(TrainState) if f.metadata["resume"])
#: What :func:`publish_weights` keeps: enough to evaluate, predict and report, not to resume.
PUBLISH_KEYS = tuple(f.name for f in fields(TrainState) if f.metadata["publish"])
#: Recipe fields that must not change when a run is resumed (they define the run's sample stream and model).
RESUME_FIXED = ("dataset", "train_split", "model_config", "optimizer", "batch_size", "seed", "max_images")
#: Recipe fields that may change on resume except between zero and non-zero (they add or drop parameters).
RESUME_FIXED_ON_OFF = ("aux_weight",)


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
    defaults = Recipe().to_dict()
    for name in RESUME_FIXED_ON_OFF:
        before = old.get(name, defaults[name])
        if (before > 0) != (recipe[name] > 0):
            raise CheckpointError(
                f"checkpoint {path}: it was trained with {name}={before!r}, the recipe has {recipe[name]!r}: "
                f"switching {name} on or off changes what is trained; resume with {name} "
                f"{'> 0' if before > 0 else '= 0'} or use a new --out folder"
            )


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"name old -> new"`` for each recipe field whose value differs between a checkpoint's recipe ``old``
    and ``new`` (both Recipe.to_dict(); lists and tuples compare equal; a field the checkpoint predates counts
    as its Recipe default), in ``new``'s field order."""
    defaults = Recipe().to_dict()

    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    changes = []
    for name, value in new.items():
        before = old.get(name, defaults.get(name))
        if canonical(before) != canonical(value):
            changes.append(f"{name} {before!r} -> {value!r}")
    return changes


def publish_weights(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write a small copy of a training checkpoint (about 3 MB instead of 9: no optimizer, scheduler or
    RNG state) for committing or sharing; it loads with ``build_from_checkpoint`` and ``dabnet test``."""
    ckpt = read_checkpoint(src)
    return save_checkpoint({k: ckpt[k] for k in PUBLISH_KEYS if k in ckpt}, dst)
