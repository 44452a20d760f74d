"""The run folder that :func:`~dabnet_lib.training.engine.fit` fills (rank 0 writes, other ranks write nothing):
``recipe.json`` at the start, ``last.pt`` (every epoch and on interruption), ``best.pt`` (best val mIoU; never
when the training split holds the val images), ``epoch_XXXX.pt`` every ``save_every`` epochs,
``metrics.jsonl`` and ``curves.png`` with every save, ``summary.json`` at the end. Every file is written
atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic_files import write_bytes_atomic
from ..model.checkpoints import copy_checkpoint, save_checkpoint
from .curves import write_metrics
from .train_state import TrainState


class RunWriter:
    """Writes the files of the run folder ``out_dir`` when ``is_main``; does nothing on other ranks."""

    def __init__(self, out_dir: Path, is_main: bool) -> None:
        self.out_dir, self.is_main = out_dir, is_main

    @property
    def last(self) -> Path:
        """``last.pt``: the checkpoint to resume from."""
        return self.out_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.out_dir / "best.pt"

    def write_recipe(self, meta: dict[str, Any]) -> None:
        """Create the folder and write ``recipe.json`` (the recipe and how this session trains it)."""
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.out_dir / "recipe.json", json.dumps(meta, indent=2).encode())

    def save(self, state: TrainState, row: dict[str, Any] | None, save_every: int) -> None:
        """After an epoch (``row``: its metrics row) or a stop without one (None): ``last.pt``; ``best.pt`` when
        the row's val mIoU beats ``state.best_val_miou`` (which it then becomes; never when val images are
        trained on); ``epoch_XXXX.pt`` at completed epochs that are a multiple of ``save_every`` (0: none);
        ``metrics.jsonl`` and ``curves.png``."""
        if not self.is_main:
            return
        val_miou = row.get("val_miou") if row is not None else None
        best = state.best_val_miou
        improved = val_miou is not None and not state.val_seen and (best is None or val_miou > best)
        if improved:
            state.best_val_miou = val_miou
        last = save_checkpoint(state.checkpoint(), self.last)
        if improved:
            copy_checkpoint(last, self.best)
        if row is not None and not row["partial"] and save_every and state.epoch % save_every == 0:
            copy_checkpoint(last, self.out_dir / f"epoch_{state.epoch:04d}.pt")
        write_metrics(self.out_dir, state.metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary.json``: ``summary`` without its ``metrics`` rows (they are in metrics.jsonl)."""
        if self.is_main:
            slim = {k: v for k, v in summary.items() if k != "metrics"}
            write_bytes_atomic(self.out_dir / "summary.json", json.dumps(slim, indent=2).encode())
