"""One epoch of training, :func:`train_one_epoch`: batches -> :func:`~dabnet_lib.training.step.train_step` ->
schedule, as torchvision's segmentation reference loops, plus what a long, resumable CPU run needs (kept in
:class:`EpochLoop`): the resolution stage, skipped non-finite steps, the ETA line, the thread tuner, the
progress bar, SIGINT/SIGTERM and the wall-time budget (under DDP checked on every rank at the same iterations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import DabnetError, first_line
from . import distributed as D
from .eta import ETA_REPORT, ETA_START, eta_line, final_stage_start, remaining_seconds
from .run_builder import StageData, TrainingRun, build_stage, stage_geometry
from .step import train_step
from .training_events import IterationInfo, TrainingEvents

#: Consecutive skipped (non-finite) steps after which training stops with an error.
MAX_SKIPPED_IN_A_ROW = 20
#: Iterations between host reads of the step flags (skipped steps) and, under DDP, between all-reduces of the
#: stop/elapsed flags, per device type: free on CPU; on CUDA every read stalls the launch queue.
HOST_SYNC_EVERY: dict[str, int] = {"cpu": 1, "cuda": 10}

#: A step the host has not read the applied flag of: (iteration, loss, applied as a bool or a device flag).
PendingStep = tuple[int, torch.Tensor, bool | torch.Tensor]


class EpochLoop:
    """What the loop keeps from one epoch to the next within one :func:`fit` session: the current stage's
    batches and loss, the model a step runs (compiled, or eager after a compile failure), the signal
    received, the training clock, skipped steps in a row and the ETA timer."""

    def __init__(
        self,
        run: TrainingRun,
        tuner: D.ThreadTuner | None,
        events: TrainingEvents,
        log: Callable[..., None],
        last_checkpoint: Path,
    ) -> None:
        self.run, self.tuner, self.events, self.log = run, tuner, events, log
        self.last_checkpoint = last_checkpoint  # named in the divergence error (resume from it)
        self.step_model = run.nets.compiled
        self.stage_data: StageData | None = None
        self.signal = 0  # the signal this process received (0: none)
        self.skipped_in_a_row = 0
        self.stage_iter0 = 0  # the iteration at which this process entered the current stage
        self.eta_t0 = 0.0
        self.elapsed0 = self.t0 = 0.0

    def start_clock(self) -> None:
        """Training time counts from now, on top of the resumed ``elapsed_s``."""
        self.elapsed0, self.t0 = self.run.state.elapsed_s, time.perf_counter()

    def progress(self) -> float:
        """Fraction of the budget used: iterations, or wall time when that is further."""
        state, total, budget_s = self.run.state, self.run.data.total_iters, self.run.budget_s
        done = state.iteration / total
        return max(done, state.elapsed_s / budget_s) if budget_s else done

    def finished(self) -> bool:
        state, recipe = self.run.state, self.run.recipe
        return (
            state.epoch >= recipe.epochs
            or state.iteration >= self.run.data.total_iters
            or (self.run.budget_s is not None and state.elapsed_s >= self.run.budget_s)
        )

    def enter_stage(self) -> StageData:
        """The batches and loss of the current stage (decided at each epoch start; a resumed mid-epoch run keeps
        its checkpoint's), rebuilt when the stage changes."""
        state, recipe = self.run.state, self.run.recipe
        if state.position == 0 or state.stage is None:
            final = recipe.final_fraction > 0 and self.progress() >= 1 - recipe.final_fraction
            state.stage = 1 if final else 0
        if self.stage_data is not None and self.stage_data.stage == state.stage:
            return self.stage_data
        run = self.run
        self.stage_data = None  # shut down the previous stage's workers first
        self.stage_data = build_stage(recipe, state.stage, run.data, run.norm, run.info, run.sampler, run.device)
        self.stage_iter0 = state.iteration
        if state.stage == 1 and recipe.final_lr is not None and state.scheduler.restart_iter is None:
            state.scheduler.restart(recipe.final_lr / recipe.lr)  # a resumed run has it in its scheduler state
            self.log(f"lr restarts at {recipe.final_lr:g} for the final stage (poly to 0 at the end of the budget)")
        if self.tuner is not None:
            self.tuner.reset()
        scale, crop = stage_geometry(recipe, state.stage)
        self.log(
            f"stage {state.stage}: crops {crop[0]}x{crop[1]}, base scale {scale:g}, batch {run.data.batch}"
            f" x {run.ctx.world_size} process(es), {run.data.iters_per_epoch} iterations/epoch"
        )
        return self.stage_data

    def step(self, images: torch.Tensor, labels: torch.Tensor, criterion: torch.nn.Module) -> tuple[Any, Any]:
        """One optimisation step; a torch.compile failure switches to the eager model for the rest of the run."""
        state, amp = self.run.state, self.run.amp
        try:
            return train_step(self.step_model, images, labels, criterion, state.optimizer, state.scaler, amp)
        except Exception as exc:
            if self.step_model is self.run.nets.eager:
                raise
            first = first_line(exc)
            self.log(
                f"torch.compile failed ({type(exc).__name__}: {first[:200]}): training continues eager", always=True
            )
            self.step_model = self.run.nets.eager
            return train_step(self.step_model, images, labels, criterion, state.optimizer, state.scaler, amp)

    def read_step_flags(self, pending: list[PendingStep]) -> int:
        """Read the applied flags of ``pending`` steps on the host (one sync for all device flags), count the
        skipped ones (:meth:`skipped`), empty ``pending``; returns how many were applied."""
        on_device = [flag for _, _, flag in pending if not isinstance(flag, bool)]
        read = iter(torch.stack(on_device).tolist() if on_device else [])
        applied = 0
        for iteration, loss, flag in pending:
            if flag if isinstance(flag, bool) else next(read):
                applied += 1
                self.skipped_in_a_row = 0
            else:
                self.skipped(float(loss), iteration)
        pending.clear()
        return applied

    def skipped(self, loss: float, iteration: int) -> None:
        """Count step ``iteration`` (1-based) whose loss or gradients were not finite (its update was skipped)."""
        self.run.state.epoch_acc["skipped"] += 1
        self.skipped_in_a_row += 1
        self.log(
            f"iteration {iteration}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'}, update skipped",
            always=True,
        )
        if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise DabnetError(
                f"training diverged: {self.skipped_in_a_row} steps in a row had a non-finite loss or gradient "
                f"(iteration {iteration}); weights are unchanged since the last good step. Lower lr "
                f"(--set lr=...) or train in full precision (--set amp=off); resume from {self.last_checkpoint}"
            )

    def eta_tick(self) -> None:
        """Print the ETA once per stage, timed over iterations ETA_START..ETA_REPORT of the stage."""
        state, data, recipe = self.run.state, self.run.data, self.run.recipe
        n = state.iteration - self.stage_iter0
        if n == ETA_START:
            self.eta_t0 = time.perf_counter()
        elif n == ETA_REPORT and not self.run.budget_s:
            s_per_iter = (time.perf_counter() - self.eta_t0) / (ETA_REPORT - ETA_START)
            start = final_stage_start(data.total_iters, data.iters_per_epoch, recipe.final_fraction)
            (_, c0), (_, c1) = stage_geometry(recipe, 0), stage_geometry(recipe, 1)
            stage = state.stage or 0
            left = remaining_seconds(
                state.iteration, data.total_iters, start, s_per_iter, stage, c1[0] * c1[1] / (c0[0] * c0[1])
            )
            estimated = stage == 0 and start < data.total_iters and c0 != c1
            self.log(eta_line(left, data.total_iters - state.iteration, s_per_iter, estimated), always=True)

    def iteration_info(self, loss: torch.Tensor, applied: bool | torch.Tensor, images: int) -> IterationInfo:
        state, data = self.run.state, self.run.data
        return {
            "iteration": state.iteration,
            "total_iters": data.total_iters,
            "epoch": state.epoch,
            "iters_per_epoch": data.iters_per_epoch,
            "loss": loss.detach(),
            "applied": applied,
            "lr": state.optimizer.param_groups[0]["lr"],
            "images": images,
            "elapsed_s": state.elapsed_s,
            "budget_s": self.run.budget_s,
        }


def train_one_epoch(loop: EpochLoop, bar: tqdm) -> tuple[str | None, bool]:
    """Train from the state's position to the end of its epoch, or until a budget or a signal stops it; returns
    ``(stop, completed)``: why it stopped early (``"signal"``, ``"minutes"``, ``"max_iters"``) or None, and
    whether the epoch was completed (the state then counts it and its position restarts at 0)."""
    run, state = loop.run, loop.run.state
    device, world, per_epoch = run.device, run.ctx.world_size, run.data.iters_per_epoch
    stage = loop.enter_stage()
    run.sampler.set_epoch(state.epoch, skip=state.position * run.data.batch)
    stop: str | None = None
    t_epoch = t_last = time.perf_counter()
    cpu_last = time.process_time()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loss_n = 0
    every = HOST_SYNC_EVERY.get(device.type, 1)
    pending: list[PendingStep] = []  # steps whose flags the host has not read
    for images, labels in stage.loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=run.layout.memory_format)
        labels = labels.to(device, non_blocking=True)
        loss, applied = loop.step(images, labels, stage.criterion)
        if isinstance(applied, bool):
            loss_sum += loss if applied else 0.0
        else:  # a device flag: keep a skipped step's loss out of the mean without a host sync
            loss_sum += torch.where(applied, loss, torch.zeros_like(loss))
        state.iteration += 1
        state.position += 1
        pending.append((state.iteration, loss, applied))
        last = state.position >= per_epoch or state.iteration >= run.data.total_iters
        if last or state.iteration % every == 0:
            loss_n += loop.read_step_flags(pending)
        state.epoch_acc["images"] += images.shape[0] * world
        loop.events.iteration(loop.iteration_info(loss, applied, images.shape[0] * world))
        loop.eta_tick()
        if loop.tuner is not None:
            now, cpu_now = time.perf_counter(), time.process_time()
            loop.tuner.record(now - t_last, cpu_now - cpu_last)
            t_last, cpu_last = now, cpu_now
        stop = _after_step(loop, bar, last or state.iteration % every == 0, loss_sum, loss_n)
        if stop or state.position >= per_epoch:
            break
    loss_n += loop.read_step_flags(pending)
    state.epoch_acc["train_s"] += time.perf_counter() - t_epoch
    D.broadcast_buffers(run.nets.net, run.ctx)  # same BN statistics on every rank for validation and saving
    state.epoch_acc["loss_sum"] += float(loss_sum)
    state.epoch_acc["loss_n"] += loss_n
    completed = state.position >= per_epoch
    if completed:
        state.epoch, state.position = state.epoch + 1, 0
    return stop, completed


def _after_step(loop: EpochLoop, bar: tqdm, sync: bool, loss_sum: torch.Tensor, loss_n: int) -> str | None:
    """Clock (all-reduced with the signal flag under DDP on ``sync`` iterations), schedule and progress bar after
    a step (``loss_sum`` of the epoch's ``loss_n`` applied steps, read only for the bar); returns why training
    stops here, or None."""
    run, state = loop.run, loop.run.state
    budget_s = run.budget_s
    sig = 0.0  # the largest signal number any rank received (0: none)
    if not run.ctx.enabled or sync:  # same iterations on every rank
        sig, state.elapsed_s = D.reduce_max(
            [loop.signal, loop.elapsed0 + time.perf_counter() - loop.t0], run.ctx, run.device
        )
    elapsed = state.elapsed_s
    state.scheduler.advance(elapsed if budget_s else None)
    if run.ctx.is_main and not bar.disable and (run.device.type == "cpu" or state.iteration % 10 == 0):
        lr = state.optimizer.param_groups[0]["lr"]
        loss = f"{float(loss_sum) / max(1, loss_n):.3f}"
        bar.set_postfix(ep=state.epoch + 1, loss=loss, lr=f"{lr:.2e}", refresh=False)
    bar.update(min(int(elapsed), int(budget_s)) - bar.n if budget_s else 1)
    if sig:
        loop.signal = int(sig)
        return "signal"
    if budget_s and elapsed >= budget_s:
        return "minutes"
    if state.iteration >= run.data.total_iters:
        return "max_iters" if state.iteration < run.recipe.epochs * run.data.iters_per_epoch else None
    return None
