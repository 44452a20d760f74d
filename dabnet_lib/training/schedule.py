"""Learning-rate schedule of the paper: linear warm-up from ``lr * warmup_ratio`` then poly decay,
stepped once per iteration by a real scheduler object (its state goes into checkpoints).

With ``i`` the number of finished iterations, ``W`` the warm-up length and ``T`` the total::

    i <  W:  lr = base * (r + (1 - r) * i / W)
    i >= W:  lr = base * (1 - p) ** power,   p = (i - W) / (T - W)   (clamped to [0, 1])

Wall-clock budgets: with ``budget_s`` set, the poly progress is ``p = max(p_iter, p_time)`` where
``p_time = (t - t_W) / (budget_s - t_W)``, ``t`` the training seconds so far (passed to
:meth:`WarmupPolyLR.advance`) and ``t_W`` the time at which warm-up ended. The learning rate thus
reaches 0 when the time budget runs out (0 from then on, even during warm-up), however the throughput changes along
the way (resolution stages, a busy machine), and stays exactly resumable: ``t``, ``t_W`` and ``T`` are scheduler state.

Restart (the recipe's ``final_lr``, applied when the final-resolution stage begins): from iteration ``R`` on, the
multiplier is ``f_R * (1 - q) ** power`` with ``q = (i - R) / (T - R)`` (or the time fraction of what was left
of the budget at ``R``, when that is further), so the lr jumps to ``base * f_R`` and decays to 0 at the end of
the budget. ``R``, ``f_R`` and the time at ``R`` are scheduler state (saved in checkpoints).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def lr_factor(i: int, total: int, warmup: int, ratio: float, power: float, time_progress: float = 0.0) -> float:
    """Multiplier of the base lr after ``i`` iterations (see the module docstring)."""
    if i < warmup:
        return ratio + (1.0 - ratio) * i / warmup
    p = (i - warmup) / max(1, total - warmup)
    p = min(1.0, max(0.0, p, time_progress))
    return (1.0 - p) ** power


class WarmupPolyLR(LRScheduler):
    """Warm-up then poly, per iteration; ``total_iters`` T, optional wall-clock ``budget_s``."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int,
        warmup_iters: int = 500,
        warmup_ratio: float = 1.0 / 3.0,
        power: float = 0.9,
        budget_s: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.budget_s = None if budget_s is None else float(budget_s)
        self.elapsed_s = 0.0
        self.warmup_end_s: float | None = 0.0 if self.warmup_iters == 0 else None
        self.restart_iter: int | None = None
        self.restart_factor = 1.0
        self.restart_s = 0.0
        super().__init__(optimizer, last_epoch)

    def time_progress(self, start_s: float | None = None) -> float:
        """Fraction of the time budget used since ``start_s`` (default: the end of warm-up); 0 without a budget
        or during warm-up."""
        start_s = self.warmup_end_s if start_s is None else start_s
        if self.budget_s is None or start_s is None:
            return 0.0
        span = self.budget_s - start_s
        return 1.0 if span <= 0 else (self.elapsed_s - start_s) / span

    def factor(self) -> float:
        if self.budget_s is not None and self.elapsed_s >= self.budget_s:
            return 0.0  # time is up (also when it runs out during warm-up)
        if self.restart_iter is not None and self.last_epoch >= self.restart_iter:  # poly again from R, no warm-up
            i, total = self.last_epoch - self.restart_iter, self.total_iters - self.restart_iter
            return self.restart_factor * lr_factor(i, total, 0, 1.0, self.power, self.time_progress(self.restart_s))
        return lr_factor(
            self.last_epoch, self.total_iters, self.warmup_iters, self.warmup_ratio, self.power, self.time_progress()
        )

    def get_lr(self) -> list[float | torch.Tensor]:
        f = self.factor()
        return [base * f for base in self.base_lrs]

    def advance(self, elapsed_s: float | None = None) -> None:
        """One iteration done; ``elapsed_s`` = training seconds so far (time budgets only)."""
        if elapsed_s is not None:
            self.elapsed_s = float(elapsed_s)
        if self.warmup_end_s is None and self.last_epoch + 1 >= self.warmup_iters:
            self.warmup_end_s = self.elapsed_s
        self.step()

    def restart(self, factor: float) -> None:
        """From now on (``last_epoch`` iterations done) the multiplier restarts at ``factor`` (> 0) and decays by
        poly to 0 at the end of the budget; the optimizer's lr is set at once."""
        self.restart_iter, self.restart_factor, self.restart_s = self.last_epoch, float(factor), self.elapsed_s
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def set_total_iters(self, total_iters: int) -> None:
        """Change T (e.g. more epochs on resume); the lr follows from the next step."""
        self.total_iters = max(1, int(total_iters))
