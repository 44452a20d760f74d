"""Remaining training time, estimated from measured throughput: the ETA line of training logs.

A run has up to two resolution stages (:class:`~dabnet_lib.training.recipes.Recipe` ``final_fraction``); the
throughput of the stage not yet seen is estimated from the measured one by the ratio of pixels per
batch, which is how the cost of a fully convolutional network scales.
"""

from __future__ import annotations

import datetime as _dt

#: Iterations of a stage (in this process) after which timing starts (compilation and warm-up
#: excluded), and after which the ETA is printed.
ETA_START, ETA_REPORT = 5, 25


def final_stage_start(total: int, iters_per_epoch: int, final_fraction: float) -> int:
    """First iteration of the final-resolution stage: the engine switches at the first epoch
    boundary where ``iteration / total >= 1 - final_fraction``; ``total`` when there is no such stage."""
    if final_fraction <= 0:
        return total
    epoch = 0
    while epoch * iters_per_epoch < total and epoch * iters_per_epoch / total < 1 - final_fraction:
        epoch += 1
    return min(total, epoch * iters_per_epoch)


def remaining_seconds(
    iteration: int, total: int, stage_start: int, s_per_iter: float, stage: int, pixel_ratio: float
) -> float:
    """Seconds left from ``iteration`` (of ``total``) at ``s_per_iter`` measured in ``stage`` (0 or 1);
    iterations of the final stage cost ``pixel_ratio`` (its pixels per batch / the first stage's)
    times those of the first stage."""
    if stage == 0:
        first = max(0, stage_start - iteration)
        final = max(0, total - max(iteration, stage_start))
        return s_per_iter * (first + final * pixel_ratio)
    return s_per_iter * max(0, total - iteration)


def eta_line(seconds: float, iterations_left: int, s_per_iter: float, estimated_stage: bool) -> str:
    """``ETA: 23.5 min for 2,480 more iterations (0.41 s/iteration now; ...), done about 21:04``."""
    done = (_dt.datetime.now() + _dt.timedelta(seconds=seconds)).strftime("%H:%M")
    note = "; the final-resolution stage estimated from its pixel count" if estimated_stage else ""
    return (
        f"ETA: {seconds / 60:.1f} min for {iterations_left:,} more iterations ({s_per_iter:.2f} s/iteration "
        f"now{note}), done about {done}"
    )
