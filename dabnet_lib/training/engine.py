"""Training: :func:`fit` runs a :class:`~dabnet_lib.training.recipes.Recipe` and writes a run folder.

Run folder (rank 0 writes): ``recipe.json``, ``metrics.jsonl`` (one row per epoch: epoch, iteration,
loss, lr, val_miou or null, images_per_s, elapsed_s, ...), ``curves.png``, ``last.pt`` (every epoch
and on interruption), ``best.pt`` (best val mIoU; never when the training split holds the val
images), ``epoch_XXXX.pt`` every ``save_every`` epochs, ``summary.json`` at the end.

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
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..atomic_files import write_bytes_atomic
from ..data.datasets import SegmentationDataset, build_dataset, get_info, subset
from ..data.host_memory import plan_caches
from ..data.statistics import statistics
from ..data.transforms import TrainTransform
from ..devices import resolve_device, to_memory_format
from ..errors import CheckpointError, DabnetError, first_line
from ..machine import device_label
from ..model.checkpoints import (
    capture_rng,
    check_resumable,
    copy_checkpoint,
    load_for_resume,
    restore_rng,
    save_checkpoint,
)
from ..model.dabnet import DABNet, DABNetConfig, load_weights
from ..model.fast_ops import fast_ops_rule, use_fast_ops
from ..paths import default_data_root
from . import distributed as D
from .autotune import TrainingChoice, choose
from .curves import write_metrics
from .eta import ETA_REPORT, ETA_START, eta_line, final_stage_start, remaining_seconds
from .losses import build_loss
from .recipes import Recipe
from .schedule import WarmupPolyLR
from .step import autocast_dtype, train_step, training_layout
from .training_events import IterationInfo, TrainingEvents, close_callbacks, predict_examples


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM during :func:`fit`: the iteration finished and ``checkpoint`` was saved;
    ``exit_code`` is 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"training stopped by signal {signum}; resumable checkpoint: {checkpoint}")
        self.signum, self.checkpoint, self.exit_code = signum, checkpoint, 128 + signum


# -- building blocks (also used by bench.py and the tests) ------------------------------------------

#: Consecutive skipped (non-finite) steps after which training stops with an error.
MAX_SKIPPED_IN_A_ROW = 20
#: Iterations between host reads of the step flags (skipped steps) and, under DDP, between all-reduces of the
#: stop/elapsed flags, per device type: free on CPU; on CUDA every read stalls the launch queue.
HOST_SYNC_EVERY: dict[str, int] = {"cpu": 1, "cuda": 10}


def build_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=recipe.lr, betas=recipe.betas, eps=recipe.adam_eps, weight_decay=recipe.weight_decay
        )
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


class _Trainer:
    """State and loop of one :func:`fit` call (see the module docstring)."""

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
        r = self.r = recipe
        self.out, self.dev, self.ctx, self.quiet = out_dir, device, ctx, quiet
        self.hardware = device_label(device)
        self.main = ctx.is_main
        self.events = TrainingEvents(callbacks, ctx.is_main, on_iteration, on_epoch)
        self.info = get_info(r.dataset)
        random.seed(r.seed)
        np.random.seed(r.seed)
        torch.manual_seed(r.seed)
        cores = max(1, (os.cpu_count() or 1) // ctx.local_world_size)
        self.tuner = (
            D.ThreadTuner((max(1, cores // 2), cores))
            if r.threads == "auto" and device.type == "cpu" and not ctx.enabled
            else None
        )
        self.threads = cores if r.threads in (None, "auto") else int(r.threads)
        torch.set_num_threads(self.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        show = not quiet and self.main
        self.resume_ckpt = self._load_resume(resume)

        # data: decoded once into RAM when it fits the budget, else per access (same samples either way)
        full_train = build_dataset(r.dataset, data_root, r.train_split)
        self.val_ds: SegmentationDataset | None = None
        self.val_seen = False
        if r.val_split and r.val_every > 0:
            self.val_ds = build_dataset(r.dataset, data_root, r.val_split)
            self.val_seen = D.overlap(full_train, self.val_ds)
            subset(self.val_ds, r.val_max_images, spread=False)
        self.train_ds = subset(full_train, r.max_images)
        plans = plan_caches([self.train_ds, self.val_ds], r.cache_ram_fraction, ctx.local_world_size)
        D.barrier(ctx)  # every local rank measured free memory before any fills its cache
        for plan in plans:
            plan.apply(show)
            self.log(plan.reason, always=True)
        if r.batch_size % ctx.world_size:
            raise DabnetError(f"batch_size {r.batch_size} must be divisible by the {ctx.world_size} DDP processes")
        self.batch = r.batch_size // ctx.world_size
        self.ipe = len(self.train_ds) // ctx.world_size // self.batch
        if self.ipe == 0:
            raise DabnetError(
                f"{r.dataset} {r.train_split} has {len(self.train_ds)} images, fewer than one batch of "
                f"{self.batch} per process: lower batch_size or raise max_images"
            )
        self.total = r.epochs * self.ipe if r.max_iters is None else min(r.epochs * self.ipe, r.max_iters)
        self.budget_s = r.minutes * 60.0 if r.minutes else None

        stats = statistics(self.train_ds, progress=show) if "dataset" in (r.mean, r.std, r.class_weights) else {}

        def pick(name: str, value: Any, official: Any) -> Any:
            return stats[name] if value == "dataset" else official if value in ("official", "none") else value

        self.mean = tuple(float(v) for v in pick("mean", r.mean, self.info.official_mean))
        std, cw = pick("std", r.std, None), pick("class_weights", r.class_weights, None)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.class_weights = None if cw is None else torch.tensor([float(v) for v in cw])

        # how to train here (precision, layout, compile): the checkpoint's when resuming, else measured
        self.cfg = DABNetConfig.from_dict(r.model_config)
        self.choice = self._choose()
        self.amp = autocast_dtype(self.choice.amp, device)
        self.layout = training_layout(self.choice.channels_last, self.amp, device)
        self.mf = self.layout.memory_format
        if self.layout.note:
            self.log(self.layout.note, always=True)

        # model, optimiser, schedule
        torch.manual_seed(r.seed)
        net: nn.Module = use_fast_ops(DABNet(self.info.num_classes, self.cfg), self.choice.fast_ops)
        if r.sync_bn and ctx.enabled:
            if device.type != "cuda":
                raise DabnetError("sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): drop --sync-bn on CPU")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        self.net = to_memory_format(net, self.mf, device)
        self.eager: nn.Module = self.net
        if ctx.enabled:
            self.eager = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None
            )
        # one static graph per crop size; compiled lazily at the first step (a failure falls back to eager)
        self.model = self.layout.compile(self.eager) if self.choice.compile else self.eager
        self.opt = build_optimizer(r, self.net.parameters())
        self.sched = WarmupPolyLR(self.opt, self.total, r.warmup_iters, r.warmup_ratio, r.poly_power, self.budget_s)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.sampler = D.EpochSampler(len(self.train_ds), r.seed, ctx)
        self.loader: DataLoader | None = None
        self.loader_stage: int | None = None

        # progress state (checkpointed)
        self.epoch = self.position = self.iteration = 0
        self.elapsed = 0.0
        self.stage: int | None = None
        self.metrics: list[dict[str, Any]] = []
        self.best: float | None = None
        self.acc = self._zero_acc()
        self._signal = 0
        self.skipped_in_a_row = 0
        self.stage_iter0 = 0  # self.iteration when this process entered the current stage
        self.eta_t0 = 0.0

    def _load_resume(self, resume: bool | str | os.PathLike[str]) -> dict[str, Any] | None:
        """The checkpoint to resume from (None for a new run, or ``"auto"`` without ``last.pt``)."""
        if not resume:
            return None
        path = self.out / "last.pt" if isinstance(resume, bool) or resume == "auto" else Path(resume)
        if resume == "auto" and not path.is_file():
            return None
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path}: no such file to resume from (train without --resume first)")
        ck = load_for_resume(path)
        check_resumable(ck, self.r.to_dict(), path)
        ck["_path"] = str(path)
        return ck

    def _choose(self) -> TrainingChoice:
        """Precision, layout and compile for this run (see :mod:`dabnet_lib.training.autotune`); a resumed run
        keeps the choice its checkpoint recorded unless the recipe sets amp, channels_last, compile or
        fast_ops explicitly; under DDP rank 0 decides for all."""
        r = self.r
        saved = (self.resume_ckpt or {}).get("training_choice")
        all_auto = all(v == "auto" for v in (r.amp, r.channels_last, r.compile, r.fast_ops))
        if saved and all_auto:  # explicit recipe values win over the checkpoint's choice
            choice = TrainingChoice.from_dict(saved, source="checkpoint")
        elif self.main:
            fast = fast_ops_rule(self.dev) if r.fast_ops == "auto" else bool(r.fast_ops)
            choice = choose(
                r.amp,
                r.channels_last,
                r.compile,
                self.dev,
                self.info.num_classes,
                self.cfg,
                r.crop_size,
                self.batch,
                torch.get_num_threads(),
                log=lambda m: self.log(m, always=True),
                fast_ops=fast,
            )
        else:
            choice = None
        choice = D.broadcast_object(choice, self.ctx)
        for line in choice.describe():
            self.log(line, always=True)
        return choice

    @staticmethod
    def _zero_acc() -> dict[str, float]:
        return {"loss_sum": 0.0, "loss_n": 0, "images": 0, "train_s": 0.0, "skipped": 0}

    def log(self, msg: str, always: bool = False) -> None:
        if self.main and (always or not self.quiet):
            tqdm.write(msg)

    # -- stages and loaders ------------------------------------------------------------------------
    def _progress(self) -> float:
        p = self.iteration / self.total
        return max(p, self.elapsed / self.budget_s) if self.budget_s else p

    def _stage_geometry(self, stage: int) -> tuple[float, tuple[int, int]]:
        r = self.r
        return (r.base_scale, r.crop_size) if stage == 0 else (r.final_base_scale, r.final_crop_size or r.crop_size)

    def _ensure_loader(self) -> None:
        if self.loader_stage == self.stage and self.loader is not None:
            return
        r = self.r
        scale, crop = self._stage_geometry(self.stage or 0)
        transform = TrainTransform(
            crop,
            r.scales,
            mean=self.mean,
            std=self.std,
            ignore_index=self.info.ignore_index,
            mirror=r.mirror,
            base_scale=scale,
        )
        samples = D.SeededSamples(self.train_ds, transform, r.seed)
        self.loader = None  # shut down the previous stage's workers first
        self.loader = D.make_loader(samples, self.sampler, self.batch, r.num_workers, self.dev.type == "cuda")
        kw: dict[str, Any] = {}
        if r.loss == "ohem":
            kw = {"thresh": r.ohem_thresh, "min_kept": r.ohem_min_kept or self.batch * crop[0] * crop[1] // 16}
        self.criterion = build_loss(r.loss, self.info.ignore_index, weight=self.class_weights, **kw).to(self.dev)
        self.loader_stage = self.stage
        self.stage_iter0 = self.iteration
        if self.tuner is not None:
            self.tuner.reset()
        self.log(
            f"stage {self.stage}: crops {crop[0]}x{crop[1]}, base scale {scale:g}, batch {self.batch}"
            f" x {self.ctx.world_size} process(es), {self.ipe} iterations/epoch"
        )

    # -- checkpoints --------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "num_classes": self.info.num_classes,
            "model_config": self.cfg.to_dict(),
            "dataset": self.info.name,
            "mean": list(self.mean),
            "std": None if self.std is None else list(self.std),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "position": self.position,
            "stage": self.stage,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "recipe": self.r.to_dict(),
            "metrics": self.metrics,
            "elapsed_s": self.elapsed,
            "epoch_acc": dict(self.acc),
            "best_val_miou": self.best,
            "val_seen": self.val_seen,
            "world_size": self.ctx.world_size,
            "training_choice": self.choice.to_dict(),
            "hardware": self.hardware,
        }

    def _resume(self) -> None:
        ck = self.resume_ckpt
        if ck is None:
            return
        path = ck["_path"]
        if ck.get("world_size", 1) != self.ctx.world_size:
            self.log(
                f"note: resuming a {ck.get('world_size')}-process run with {self.ctx.world_size} process(es): "
                "the sample order differs from an uninterrupted run"
            )
        load_weights(self.net, ck)
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.sched.set_total_iters(self.total)
        self.sched.budget_s = self.budget_s
        if self.scaler.is_enabled() and ck["scaler"]:
            self.scaler.load_state_dict(ck["scaler"])
        restore_rng(ck["rng"])
        self.epoch, self.iteration, self.position = int(ck["epoch"]), int(ck["iteration"]), int(ck["position"])
        self.stage, self.elapsed, self.metrics = ck.get("stage"), float(ck["elapsed_s"]), list(ck["metrics"])
        self.acc = dict(ck.get("epoch_acc") or self._zero_acc())
        self.best = ck.get("best_val_miou")
        self.log(
            f"resumed from {path}: epoch {self.epoch} + {self.position} iterations, iteration {self.iteration}, "
            f"{self.elapsed / 60:.1f} min trained",
            always=True,
        )

    def _save(self, row: dict[str, Any] | None) -> None:
        if not self.main:
            return
        val_miou = row.get("val_miou") if row is not None else None
        improved = val_miou is not None and not self.val_seen and (self.best is None or val_miou > self.best)
        if improved:
            self.best = val_miou
        last = save_checkpoint(self._checkpoint(), self.out / "last.pt")
        if improved:
            copy_checkpoint(last, self.out / "best.pt")
        if row is not None and not row["partial"] and self.r.save_every and self.epoch % self.r.save_every == 0:
            copy_checkpoint(last, self.out / f"epoch_{self.epoch:04d}.pt")
        write_metrics(self.out, self.metrics)

    # -- validation ---------------------------------------------------------------------------------
    def _validate(self) -> dict[str, Any]:
        assert self.val_ds is not None
        res = D.evaluate_sharded(
            self.net, self.val_ds, self.ctx, self.dev, scale=self.r.val_scale, mean=self.mean, std=self.std
        )
        iou = [None if math.isnan(float(v)) else float(v) for v in res["iou"]]
        return {
            "val_miou": float(res["miou"]),
            "val_official_miou": float(res["official_miou"]),
            "val_pixel_accuracy": float(res["pixel_accuracy"]),
            "val_iou": dict(zip(self.info.classes, iou, strict=True)),
            "val_pixels": int(np.asarray(res["confusion"]).sum()),
            "val_s": float(res["seconds"]),
            "val_seen": self.val_seen,
        }

    # -- the loop -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._signal:
            raise KeyboardInterrupt  # second signal: stop at once
        self._signal = signum
        self.log(f"signal {signum}: finishing this iteration, then saving a resumable checkpoint", always=True)

    def _epoch(self, bar: tqdm) -> str | None:
        r = self.r
        if self.position == 0 or self.stage is None:
            self.stage = 1 if r.final_fraction > 0 and self._progress() >= 1 - r.final_fraction else 0
        self._ensure_loader()
        self.sampler.set_epoch(self.epoch, skip=self.position * self.batch)
        stop: str | None = None
        t_epoch = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dev)
        loss_n = 0
        every = HOST_SYNC_EVERY.get(self.dev.type, 1)
        pending: list[tuple[int, torch.Tensor, bool | torch.Tensor]] = []  # steps whose flags the host has not read
        assert self.loader is not None
        t_last = t_epoch
        for images, labels in self.loader:
            images = images.to(self.dev, non_blocking=True).contiguous(memory_format=self.mf)
            labels = labels.to(self.dev, non_blocking=True)
            loss, applied = self._step(images, labels)
            if isinstance(applied, bool):
                loss_sum += loss if applied else 0.0
            else:  # a device flag: keep a skipped step's loss out of the mean without a host sync
                loss_sum += torch.where(applied, loss, torch.zeros_like(loss))
            self.iteration += 1
            self.position += 1
            pending.append((self.iteration, loss, applied))
            last = self.position >= self.ipe or self.iteration >= self.total
            if last or self.iteration % every == 0:
                loss_n += self._read_step_flags(pending)
            self.acc["images"] += images.shape[0] * self.ctx.world_size
            self.events.iteration(self._iteration_info(loss, applied, images.shape[0] * self.ctx.world_size))
            self._eta_tick()
            if self.tuner is not None:
                now = time.perf_counter()
                self.tuner.record(now - t_last)
                t_last = now
            sig = 0.0  # the largest signal number any rank received (0: none)
            if not self.ctx.enabled or last or self.iteration % every == 0:  # same iterations on every rank
                sig, self.elapsed = D.reduce_max(
                    [self._signal, self.elapsed0 + time.perf_counter() - self.t0], self.ctx, self.dev
                )
            elapsed = self.elapsed
            self.sched.advance(elapsed if self.budget_s else None)
            if self.main and not bar.disable and (self.dev.type == "cpu" or self.iteration % 10 == 0):
                bar.set_postfix(
                    ep=self.epoch + 1,
                    loss=f"{float(loss_sum) / max(1, loss_n):.3f}",
                    lr=f"{self.opt.param_groups[0]['lr']:.2e}",
                    refresh=False,
                )
            if self.budget_s:
                bar.update(min(int(elapsed), int(self.budget_s)) - bar.n)
            else:
                bar.update(1)
            if sig:
                stop, self._signal = "signal", int(sig)
            elif self.budget_s and elapsed >= self.budget_s:
                stop = "minutes"
            elif self.iteration >= self.total:
                stop = "max_iters" if self.iteration < r.epochs * self.ipe else None
            if stop or self.position >= self.ipe:
                break
        loss_n += self._read_step_flags(pending)
        self.acc["train_s"] += time.perf_counter() - t_epoch
        D.broadcast_buffers(self.net, self.ctx)  # same BN statistics on every rank for validation and saving
        self.acc["loss_sum"] += float(loss_sum)
        self.acc["loss_n"] += loss_n
        completed = self.position >= self.ipe
        if completed:
            self.epoch, self.position = self.epoch + 1, 0
        row = None
        if completed or stop in ("minutes", "max_iters"):
            row = self._row(completed, stop)
        self._save(row)
        if row is not None:
            self._report(row)
        if stop == "signal":
            raise TrainingInterrupted(self._signal, self.out / "last.pt" if self.main else None)
        return stop

    def _eta_tick(self) -> None:
        """Print the ETA once per stage, timed over iterations ETA_START..ETA_REPORT of the stage."""
        n = self.iteration - self.stage_iter0
        if n == ETA_START:
            self.eta_t0 = time.perf_counter()
        elif n == ETA_REPORT and not self.budget_s:
            r = self.r
            s_per_iter = (time.perf_counter() - self.eta_t0) / (ETA_REPORT - ETA_START)
            start = final_stage_start(self.total, self.ipe, r.final_fraction)
            (_, c0), (_, c1) = self._stage_geometry(0), self._stage_geometry(1)
            left = remaining_seconds(
                self.iteration, self.total, start, s_per_iter, self.stage or 0, c1[0] * c1[1] / (c0[0] * c0[1])
            )
            estimated = (self.stage or 0) == 0 and start < self.total and c0 != c1
            self.log(eta_line(left, self.total - self.iteration, s_per_iter, estimated), always=True)

    def _read_step_flags(self, pending: list[tuple[int, torch.Tensor, bool | torch.Tensor]]) -> int:
        """Read the applied flags of ``pending`` steps ``(iteration, loss, applied)`` on the host (one sync for
        all device flags), count the skipped ones (:meth:`_skipped`), empty ``pending``; returns how many
        were applied."""
        on_device = [flag for _, _, flag in pending if not isinstance(flag, bool)]
        read = iter(torch.stack(on_device).tolist() if on_device else [])
        applied = 0
        for iteration, loss, flag in pending:
            if flag if isinstance(flag, bool) else next(read):
                applied += 1
                self.skipped_in_a_row = 0
            else:
                self._skipped(float(loss), iteration)
        pending.clear()
        return applied

    def _skipped(self, loss: float, iteration: int) -> None:
        """Count step ``iteration`` (1-based) whose loss or gradients were not finite (its update was skipped)."""
        self.acc["skipped"] += 1
        self.skipped_in_a_row += 1
        self.log(
            f"iteration {iteration}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'}, update skipped",
            always=True,
        )
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise DabnetError(
                f"training diverged: {self.skipped_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(iteration {iteration}); weights are unchanged since the last good step. Lower lr "
                f"(--set lr=...) or train in full precision (--set amp=off); resume from {self.out / 'last.pt'}"
            )

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, bool | torch.Tensor]:
        try:
            return train_step(self.model, images, labels, self.criterion, self.opt, self.scaler, self.amp)
        except Exception as exc:
            if self.model is self.eager:
                raise
            first = first_line(exc)
            self.log(
                f"torch.compile failed ({type(exc).__name__}: {first[:200]}): training continues eager", always=True
            )
            self.model = self.eager
            return train_step(self.model, images, labels, self.criterion, self.opt, self.scaler, self.amp)

    def _row(self, completed: bool, stop: str | None) -> dict[str, Any]:
        a, r = self.acc, self.r
        scale, crop = self._stage_geometry(self.stage or 0)
        row: dict[str, Any] = {
            "epoch": self.epoch if completed else round(self.epoch + self.position / self.ipe, 4),
            "iteration": self.iteration,
            "loss": a["loss_sum"] / a["loss_n"] if a["loss_n"] else None,
            "skipped_steps": a["skipped"],
            "lr": self.opt.param_groups[0]["lr"],
            "val_miou": None,
            "images_per_s": a["images"] / a["train_s"] if a["train_s"] > 0 else None,
            "elapsed_s": round(self.elapsed, 3),
            "train_s": round(a["train_s"], 3),
            "images": a["images"],
            "base_scale": scale,
            "crop": list(crop),
            "partial": not completed,
            "threads": torch.get_num_threads(),
        }
        due = (completed and (self.epoch % r.val_every == 0 if r.val_every else False)) or self.epoch >= r.epochs
        if self.val_ds is not None and (due or stop in ("minutes", "max_iters")) and stop != "signal":
            row.update(self._validate())
        self.metrics.append(row)
        self.acc = self._zero_acc()
        return row

    def _report(self, row: dict[str, Any]) -> None:
        val = (
            ""
            if row["val_miou"] is None
            else f", val mIoU {100 * row['val_miou']:.2f}%"
            + (" (val images are in the training split)" if self.val_seen else "")
        )
        ips = row["images_per_s"]
        loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"
        skipped = f" ({row['skipped_steps']} non-finite steps skipped)" if row["skipped_steps"] else ""
        self.log(
            f"epoch {row['epoch']}: loss {loss}{skipped}, lr {row['lr']:.2e}, "
            f"{'-' if ips is None else f'{ips:.1f}'} img/s, {row['elapsed_s'] / 60:.1f} min{val}"
        )
        self.events.epoch(row, self._val_examples)

    def _iteration_info(self, loss: torch.Tensor, applied: bool | torch.Tensor, images: int) -> IterationInfo:
        return {
            "iteration": self.iteration,
            "total_iters": self.total,
            "epoch": self.epoch,
            "iters_per_epoch": self.ipe,
            "loss": loss.detach(),
            "applied": applied,
            "lr": self.opt.param_groups[0]["lr"],
            "images": images,
            "elapsed_s": self.elapsed,
            "budget_s": self.budget_s,
        }

    def _val_examples(self, count: int) -> list[Any]:
        """``count`` predictions of the current model on the validation split (for TensorBoard)."""
        if self.val_ds is None:
            return []
        return predict_examples(self.net, self.val_ds, count, self.mean, self.std, self.dev, self.r.val_scale)

    def _finished(self) -> bool:
        return (
            self.epoch >= self.r.epochs
            or self.iteration >= self.total
            or (self.budget_s is not None and self.elapsed >= self.budget_s)
        )

    def run(self) -> dict[str, Any]:
        r = self.r
        self._resume()
        self.resume_ckpt = None  # free the memory
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            meta = {
                "recipe": r.to_dict(),
                "device": str(self.dev),
                "world_size": self.ctx.world_size,
                "threads": self.threads,
                "amp": str(self.amp),
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "train_images": len(self.train_ds),
                "iters_per_epoch": self.ipe,
                "total_iters": self.total,
                "mean": self.mean,
                "std": self.std,
                "val_seen": self.val_seen,
                "class_weights": None if self.class_weights is None else self.class_weights.tolist(),
                "hardware": self.hardware,
                "training_choice": self.choice.to_dict(),
            }
            write_bytes_atomic(self.out / "recipe.json", json.dumps(meta, indent=2).encode())
        budget = f"{r.minutes:g} min" if r.minutes else f"{r.epochs} epochs ({self.total} iterations)"
        self.log(
            f"train {r.describe()} on {len(self.train_ds)} {r.train_split} images, {self.dev}, "
            f"{self.ctx.world_size} process(es), budget {budget} -> {self.out}",
            always=True,
        )
        if self.val_seen:
            self.log(
                f"NOTE: the training split '{r.train_split}' contains the '{r.val_split}' images: val mIoU is "
                "measured on training images, so nothing is selected on it; the result is last.pt "
                "(score it on the test split with `dabnet test`).",
                always=True,
            )
        stop: str | None = None
        if self._finished():
            self.log("nothing left to train (budget already spent): raise epochs/minutes to continue", always=True)
        else:
            old = {}
            if threading.current_thread() is threading.main_thread():
                old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            total = int(self.budget_s) if self.budget_s else self.total
            bar = tqdm(
                total=total,
                initial=min(total, int(self.elapsed) if self.budget_s else self.iteration),
                unit="s" if self.budget_s else "it",
                desc=f"train {r.dataset}",
                dynamic_ncols=True,
                disable=self.quiet or not self.main,
            )
            self.elapsed0, self.t0 = self.elapsed, time.perf_counter()
            try:
                while stop is None and not self._finished():
                    stop = self._epoch(bar)
            finally:
                bar.close()
                for s, handler in old.items():
                    signal.signal(s, handler)
                self.loader = None
        return self._summary(stop or "epochs")

    def _summary(self, stop: str) -> dict[str, Any]:
        digests = D.gather_objects(D.weights_digest(self.net), self.ctx)
        best = self.out / "best.pt"
        images = sum(m["images"] for m in self.metrics)
        train_s = sum(m["train_s"] for m in self.metrics)
        last_val = next((m for m in reversed(self.metrics) if m.get("val_miou") is not None), None)
        summary = {
            "out_dir": str(self.out),
            "last": str(self.out / "last.pt"),
            "best": str(best) if best.is_file() and not self.val_seen else None,
            "result": str(best if best.is_file() and not self.val_seen else self.out / "last.pt"),
            "epochs": self.epoch + self.position / self.ipe,
            "iterations": self.iteration,
            "elapsed_s": self.elapsed,
            "images_per_s": images / train_s if train_s else None,
            "stopped_by": stop,
            "val_seen": self.val_seen,
            "best_val_miou": self.best,
            "final_val_miou": None if last_val is None else last_val["val_miou"],
            "device": str(self.dev),
            "hardware": self.hardware,
            "training_choice": self.choice.to_dict(),
            "world_size": self.ctx.world_size,
            "weights_digest": digests[0],
            "rank_weight_digests": digests,
            "metrics": self.metrics,
        }
        if self.main:
            slim = {k: v for k, v in summary.items() if k != "metrics"}
            write_bytes_atomic(self.out / "summary.json", json.dumps(slim, indent=2).encode())
            val = "" if summary["best_val_miou"] is None else f", best val mIoU {100 * summary['best_val_miou']:.2f}%"
            self.log(
                f"done ({stop}): {summary['epochs']:.2f} epochs, {self.iteration} iterations, "
                f"{self.elapsed / 60:.1f} min{val}; result {summary['result']}",
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
        return trainer.run()
    finally:
        try:
            close_callbacks(callbacks if ctx.is_main else ())
        finally:
            D.teardown(ctx)
