"""Training: :func:`fit` runs a :class:`~dabnet_lib.training.recipes.Recipe` and writes a run folder.

The parts: :mod:`.run_builder` builds data, model, optimiser and schedule; :class:`~.train_state.TrainState` is
what a checkpoint holds; :func:`~.epoch_loop.train_one_epoch` trains; :class:`~.run_writer.RunWriter` writes
the run folder (rank 0): ``recipe.json``, ``metrics.jsonl`` (one row per epoch: epoch, iteration, loss, lr,
val_miou or null, images_per_s, elapsed_s, ...), ``curves.png``, ``last.pt`` (every epoch and on
interruption), ``best.pt`` (best val mIoU; never when the training split holds the val images),
``epoch_XXXX.pt`` every ``save_every`` epochs, ``summary.json`` at the end. This module runs them.

Throughput: the training split is decoded once into RAM when it fits ``cache_ram_fraction`` of the free
host memory (else per access in the loader, :mod:`dabnet_lib.data.host_memory`), augmented in-process
(``num_workers=0``) or by forked persistent workers, fed channels_last (NCHW where bf16 channels_last gradients are
wrong, see :mod:`dabnet_lib.training.step`); a step with a non-finite loss or gradient is skipped and counted
(``skipped_steps``), 20 in a row stop the run; ``threads="auto"`` re-chooses the CPU thread
count while training (:class:`~dabnet_lib.training.distributed.ThreadTuner`: on a shared 2-core machine two
threads collapse when another process holds a core); CUDA adds AMP (bf16, else fp16 + GradScaler),
cudnn.benchmark, pinned memory and non-blocking copies.

``compile=True`` wraps the model in torch.compile (one static graph per crop size, compiled at the
first step of each resolution stage, about a minute on 2 cores; falls back to eager if it fails).

Budgets: ``epochs`` (and ``max_iters``) and/or ``minutes`` of training wall time, counted from the
first iteration (dataset decoding and statistics excluded; compilation, periodic validation and
saving included), summed over resumed sessions; the run stops at an iteration boundary, validates,
saves. The poly schedule follows whichever budget is nearer its end (see :mod:`dabnet_lib.training.schedule`).
``final_fraction`` switches to the final resolution stage at the first epoch boundary past that
share of the budget.

Exact resume: the order of samples and every sample's augmentation are functions of
``(seed, epoch, index)``; checkpoints hold model, optimizer, scheduler, scaler, RNG states and the
position inside the epoch, so a run stopped (also mid-epoch, by SIGINT/SIGTERM) and resumed ends with
the same weights as one run straight through (same seed, same device and fixed thread count; with
``threads="auto"`` or a time budget, runs are not bit-reproducible). Bit-exactness is a CPU guarantee (the
tests run on CPU, GPUs hidden): on CUDA, cudnn.benchmark's algorithm choice and the atomic adds of the
bilinear upsampling backward make every run, resumed or not, differ in the last bits.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..devices import resolve_device
from ..errors import CheckpointError
from ..machine import device_label
from ..malloc_reuse import keep_freed_memory
from ..model.checkpoints import capture_rng, restore_rng
from ..paths import default_data_root
from . import distributed as D
from .epoch_loop import EpochLoop, train_one_epoch
from .recipes import Recipe
from .run_builder import build_run, stage_geometry, thread_plan
from .run_writer import RunWriter
from .train_state import check_resumable, load_for_resume, new_epoch_totals, recipe_changes
from .training_events import TrainingEvents, close_callbacks, predict_examples


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during :func:`fit`: the iteration finished and ``checkpoint`` was saved;
    ``exit_code`` is 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"training stopped by signal {signum}; resumable checkpoint: {checkpoint}")
        self.signum, self.checkpoint, self.exit_code = signum, checkpoint, 128 + signum


class _Trainer:
    """One :func:`fit` session: builds the run, resumes it, trains epoch by epoch until a budget or a signal
    stops it, validates, reports and writes the run folder (see the module docstring)."""

    def __init__(
        self,
        recipe: Recipe,
        data_root: Path,
        out_dir: Path,
        device: torch.device,
        ctx: D.DistContext,
        quiet: bool,
        on_iteration: Callable[[int], None] | None,
        on_epoch: Callable[[dict[str, Any]], None] | None,
        callbacks: Sequence[Any] = (),
        resume: bool | str | os.PathLike[str] = False,
    ) -> None:
        self.recipe, self.out_dir, self.device, self.ctx, self.quiet = recipe, out_dir, device, ctx, quiet
        hardware = device_label(device)
        self.events = TrainingEvents(callbacks, ctx.is_main, on_iteration, on_epoch)
        random.seed(recipe.seed)
        np.random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        self.threads, tuner = thread_plan(recipe, device, ctx)
        torch.set_num_threads(self.threads)
        # CPU steps allocate and free their activations again each time: keep freed memory instead of faulting it
        # back in from the kernel every step (dabnet_lib.malloc_reuse; what is trained is unchanged)
        self.host_malloc = keep_freed_memory() if device.type == "cpu" else None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.resume_from = self._load_resume(resume)
        saved_choice = (self.resume_from or {}).get("training_choice")
        show = not quiet and ctx.is_main
        self.run = build_run(recipe, data_root, device, ctx, saved_choice, hardware, show, self._log_always)
        self.writer = RunWriter(out_dir, ctx.is_main)
        self.loop = EpochLoop(self.run, tuner, self.events, self.log, self.writer.last)

    def log(self, msg: str, always: bool = False) -> None:
        """Print ``msg`` on rank 0 (unless quiet, or ``always``)."""
        if self.ctx.is_main and (always or not self.quiet):
            tqdm.write(msg)

    def _log_always(self, msg: str) -> None:
        self.log(msg, always=True)

    def _load_resume(self, resume: bool | str | os.PathLike[str]) -> dict[str, Any] | None:
        """The checkpoint to resume from (None for a new run, or ``"auto"`` without ``last.pt``)."""
        if not resume:
            return None
        path = self.out_dir / "last.pt" if isinstance(resume, bool) or resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            return None
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path}: no such file to resume from (train without --resume first)")
        ck = load_for_resume(path)
        check_resumable(ck, self.recipe.to_dict(), path)
        ck["_path"] = str(path)
        return ck

    def _resume(self) -> None:
        """Continue from the checkpoint :meth:`_load_resume` read, with this session's budgets."""
        ck, state = self.resume_from, self.run.state
        if ck is None:
            return
        if ck.get("world_size", 1) != self.ctx.world_size:
            self.log(
                f"note: resuming a {ck.get('world_size')}-process run with {self.ctx.world_size} process(es): "
                "the sample order differs from an uninterrupted run"
            )
        state.restore(ck)
        state.scheduler.set_total_iters(self.run.data.total_iters)
        state.scheduler.budget_s = self.run.budget_s
        self.log(
            f"resumed from {ck['_path']}: epoch {state.epoch} + {state.position} iterations, "
            f"iteration {state.iteration}, {state.elapsed_s / 60:.1f} min trained",
            always=True,
        )
        changes = recipe_changes(ck["recipe"], self.recipe.to_dict())
        if changes:
            self.log(
                f"note: the recipe differs from the checkpoint's in {'; '.join(changes)}: its {state.iteration} "
                "iterations were trained with the old values (use a new --out folder to train the new recipe "
                "from scratch)",
                always=True,
            )

    def _meta(self) -> dict[str, Any]:
        """What ``recipe.json`` holds: the recipe and how this session trains it."""
        run, data = self.run, self.run.data
        return {
            "recipe": self.recipe.to_dict(),
            "device": str(self.device),
            "world_size": self.ctx.world_size,
            "threads": self.threads,
            "host_malloc": self.host_malloc,
            "amp": str(run.amp),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "train_images": len(data.train),
            "iters_per_epoch": data.iters_per_epoch,
            "total_iters": data.total_iters,
            "mean": run.norm.mean,
            "std": run.norm.std,
            "val_seen": data.val_seen,
            "class_weights": None if run.norm.class_weights is None else run.norm.class_weights.tolist(),
            "hardware": run.state.hardware,
            "training_choice": run.choice.to_dict(),
        }

    def _announce(self) -> None:
        recipe, data = self.recipe, self.run.data
        budget = (
            f"{recipe.minutes:g} min" if recipe.minutes else f"{recipe.epochs} epochs ({data.total_iters} iterations)"
        )
        self.log(
            f"train {recipe.describe()} on {len(data.train)} {recipe.train_split} images, {self.device}, "
            f"{self.ctx.world_size} process(es), budget {budget} -> {self.out_dir}",
            always=True,
        )
        if self.host_malloc is not None:
            self.log(f"freed host memory (dabnet_lib.malloc_reuse): {self.host_malloc}")
        if data.val_seen:
            self.log(
                f"NOTE: the training split '{recipe.train_split}' contains the '{recipe.val_split}' images: val mIoU "
                "is measured on training images, so nothing is selected on it; the result is last.pt "
                "(score it on the test split with `dabnet test`).",
                always=True,
            )

    def train(self) -> dict[str, Any]:
        """Resume (when asked), train until a budget ends; returns the summary (see :func:`fit`)."""
        self._resume()
        self.resume_from = None  # free the memory
        self.writer.write_recipe(self._meta())
        self._announce()
        stop: str | None = None
        if self.loop.finished():
            self.log("nothing left to train (budget already spent): raise epochs/minutes to continue", always=True)
        else:
            old = {}
            if threading.current_thread() is threading.main_thread():
                old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            bar = self._progress_bar()
            self.loop.start_clock()
            try:
                while stop is None and not self.loop.finished():
                    stop = self._epoch(bar)
            finally:
                bar.close()
                for s, handler in old.items():
                    signal.signal(s, handler)
                self.loop.stage_data = None  # ends the loader's worker processes
        return self._summary(stop or "epochs")

    def _progress_bar(self) -> tqdm:
        """Seconds of the time budget, else iterations, on rank 0 unless quiet."""
        state, budget_s, total_iters = self.run.state, self.run.budget_s, self.run.data.total_iters
        total = int(budget_s) if budget_s else total_iters
        return tqdm(
            total=total,
            initial=min(total, int(state.elapsed_s) if budget_s else state.iteration),
            unit="s" if budget_s else "it",
            desc=f"train {self.recipe.dataset}",
            dynamic_ncols=True,
            disable=self.quiet or not self.ctx.is_main,
        )

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.loop.signal:
            raise KeyboardInterrupt  # second signal: stop at once
        self.loop.signal = signum
        self.log(f"signal {signum}: finishing this iteration, then saving a resumable checkpoint", always=True)

    def _epoch(self, bar: tqdm) -> str | None:
        """Train the rest of an epoch; then its metrics row (validated when due), the checkpoints and the
        report; TrainingInterrupted after saving when a signal stopped it."""
        stop, completed = train_one_epoch(self.loop, bar)
        row = None
        if completed or stop in ("minutes", "max_iters"):
            row = self._row(completed, stop)
        self.writer.save(self.run.state, row, self.recipe.save_every)
        if row is not None:
            self._report(row)
        if stop == "signal":
            raise TrainingInterrupted(self.loop.signal, self.writer.last if self.ctx.is_main else None)
        return stop

    def _row(self, completed: bool, stop: str | None) -> dict[str, Any]:
        """The metrics row of the epoch just trained (``partial`` when a budget stopped it inside the epoch)."""
        state, recipe, per_epoch = self.run.state, self.recipe, self.run.data.iters_per_epoch
        totals = state.epoch_acc
        scale, crop = stage_geometry(recipe, state.stage or 0)
        row: dict[str, Any] = {
            "epoch": state.epoch if completed else round(state.epoch + state.position / per_epoch, 4),
            "iteration": state.iteration,
            "loss": totals["loss_sum"] / totals["loss_n"] if totals["loss_n"] else None,
            "skipped_steps": totals["skipped"],
            "lr": state.optimizer.param_groups[0]["lr"],
            "val_miou": None,
            "images_per_s": totals["images"] / totals["train_s"] if totals["train_s"] > 0 else None,
            "elapsed_s": round(state.elapsed_s, 3),
            "train_s": round(totals["train_s"], 3),
            "images": totals["images"],
            "base_scale": scale,
            "crop": list(crop),
            "partial": not completed,
            "threads": torch.get_num_threads(),
        }
        every = recipe.val_every
        due = (completed and (state.epoch % every == 0 if every else False)) or state.epoch >= recipe.epochs
        if self.run.data.val is not None and (due or stop in ("minutes", "max_iters")) and stop != "signal":
            row.update(self._validate())
        state.metrics.append(row)
        state.epoch_acc = new_epoch_totals()
        return row

    def _validate(self) -> dict[str, Any]:
        """The ``val_*`` columns: the current network scored on the val split (sharded over DDP ranks)."""
        run = self.run
        assert run.data.val is not None
        res = D.evaluate_sharded(
            run.nets.net,
            run.data.val,
            self.ctx,
            self.device,
            scale=self.recipe.val_scale,
            mean=run.norm.mean,
            std=run.norm.std,
        )
        iou = [None if math.isnan(float(v)) else float(v) for v in res["iou"]]
        return {
            "val_miou": float(res["miou"]),
            "val_official_miou": float(res["official_miou"]),
            "val_pixel_accuracy": float(res["pixel_accuracy"]),
            "val_iou": dict(zip(run.info.classes, iou, strict=True)),
            "val_pixels": int(np.asarray(res["confusion"]).sum()),
            "val_s": float(res["seconds"]),
            "val_seen": run.data.val_seen,
        }

    def _report(self, row: dict[str, Any]) -> None:
        """The epoch's log line and progress events (callbacks, hooks)."""
        val = (
            ""
            if row["val_miou"] is None
            else f", val mIoU {100 * row['val_miou']:.2f}%"
            + (" (val images are in the training split)" if self.run.data.val_seen else "")
        )
        ips = row["images_per_s"]
        loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"
        skipped = f" ({row['skipped_steps']} non-finite steps skipped)" if row["skipped_steps"] else ""
        self.log(
            f"epoch {row['epoch']}: loss {loss}{skipped}, lr {row['lr']:.2e}, "
            f"{'-' if ips is None else f'{ips:.1f}'} img/s, {row['elapsed_s'] / 60:.1f} min{val}"
        )
        self.events.epoch(row, self._val_examples)

    def _val_examples(self, count: int) -> list[Any]:
        """``count`` predictions of the current model on the validation split (for TensorBoard)."""
        run = self.run
        if run.data.val is None:
            return []
        return predict_examples(
            run.nets.net, run.data.val, count, run.norm.mean, run.norm.std, self.device, self.recipe.val_scale
        )

    def _summary(self, stop: str) -> dict[str, Any]:
        """What :func:`fit` returns; written to ``summary.json`` (without the rows) with the closing log line."""
        run, state, out = self.run, self.run.state, self.out_dir
        digests = D.gather_objects(D.weights_digest(run.nets.net), self.ctx)
        best = self.writer.best
        selected = best.is_file() and not run.data.val_seen
        images = sum(m["images"] for m in state.metrics)
        train_s = sum(m["train_s"] for m in state.metrics)
        last_val = next((m for m in reversed(state.metrics) if m.get("val_miou") is not None), None)
        summary = {
            "out_dir": str(out),
            "last": str(self.writer.last),
            "best": str(best) if selected else None,
            "result": str(best if selected else self.writer.last),
            "epochs": state.epoch + state.position / run.data.iters_per_epoch,
            "iterations": state.iteration,
            "elapsed_s": state.elapsed_s,
            "images_per_s": images / train_s if train_s else None,
            "stopped_by": stop,
            "val_seen": run.data.val_seen,
            "best_val_miou": state.best_val_miou,
            "final_val_miou": None if last_val is None else last_val["val_miou"],
            "device": str(self.device),
            "hardware": state.hardware,
            "training_choice": run.choice.to_dict(),
            "world_size": self.ctx.world_size,
            "weights_digest": digests[0],
            "rank_weight_digests": digests,
            "metrics": state.metrics,
        }
        self.writer.write_summary(summary)
        val = "" if state.best_val_miou is None else f", best val mIoU {100 * state.best_val_miou:.2f}%"
        self.log(
            f"done ({stop}): {summary['epochs']:.2f} epochs, {state.iteration} iterations, "
            f"{state.elapsed_s / 60:.1f} min{val}; result {summary['result']}",
            always=True,
        )
        return summary


# -- fit ------------------------------------------------------------------------------------------


def fit(
    recipe: Recipe,
    data_root: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "runs/run",
    resume: bool | str | os.PathLike[str] = False,
    device: str = "auto",
    quiet: bool = False,
    on_iteration: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``recipe`` on ``data_root`` (default ``data/<dataset>``) into ``out_dir``; returns a summary
    (paths ``last``/``best``/``result``, ``epochs``, ``iterations``, ``elapsed_s``, ``images_per_s``,
    ``stopped_by``, ``best_val_miou``, ``weights_digest``, ``metrics`` rows, ...).

    resume: False (new run), True (``out_dir/last.pt`` must exist), ``"auto"`` (resume when it exists)
    or a checkpoint path. device: ``auto`` | ``cpu`` | ``cuda`` (overrides ``recipe.device``).
    on_iteration(iteration) / on_epoch(metrics row): optional hooks for tests (every rank).
    callbacks: progress listeners on rank 0 (TensorBoard, the notebook's live view; see
    :mod:`dabnet_lib.training.training_events`), each closed when ``fit`` returns or raises.
    Under ``torchrun`` every rank calls this; only rank 0 writes files and logs. SIGINT/SIGTERM raise
    :class:`TrainingInterrupted` after saving ``last.pt``. On return or raise the caller gets its thread
    count, cudnn.benchmark and RNG states back.
    """
    with _callers_global_state_restored():
        return _fit(recipe, data_root, out_dir, resume, device, quiet, on_iteration, on_epoch, callbacks)


@contextlib.contextmanager
def _callers_global_state_restored() -> Iterator[None]:
    """Give the caller back what training changes process-wide: torch's thread count, cudnn.benchmark and
    the Python, numpy and torch RNG states (training seeds them from the recipe)."""
    threads, benchmark, rng = torch.get_num_threads(), torch.backends.cudnn.benchmark, capture_rng()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        restore_rng(rng)


def _fit(
    recipe: Recipe,
    data_root: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    resume: bool | str | os.PathLike[str],
    device: str,
    quiet: bool,
    on_iteration: Callable[[int], None] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    callbacks: Sequence[Any],
) -> dict[str, Any]:
    dev = resolve_device(device if device != "auto" else recipe.device)
    ctx = D.setup(dev)
    try:
        trainer = _Trainer(
            recipe,
            Path(data_root) if data_root else default_data_root(recipe.dataset),
            Path(out_dir),
            D.device_for(ctx, dev),
            ctx,
            quiet,
            on_iteration,
            on_epoch,
            callbacks,
            resume,
        )
        return trainer.train()
    finally:
        try:
            close_callbacks(callbacks if ctx.is_main else ())
        finally:
            D.teardown(ctx)
