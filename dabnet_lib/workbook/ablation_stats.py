"""Statistics of an ablation sweep: paired deltas with t-intervals, verdicts, and the seed noise per budget.

Every variant is trained with the same seeds as the default (same data order and augmentation per
seed), so a variant's effect is estimated from the per-seed differences ``d_s = variant_s - default_s``:
mean ``d``, sample std ``s_d``, and the 95% interval ``d +- t(0.975, n-1) * s_d / sqrt(n)`` (Student's
t, ``n`` paired seeds). The verdict is ``better`` when the interval lies above 0, ``worse`` below, else
``not resolved``. All values are val mIoU in percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
#: Most seeds :func:`seeds_to_resolve` looks at before saying "more than".
MAX_SEEDS = 50


def t_interval(deltas: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)`` of paired differences; std/low/high are NaN with fewer than 2 values."""
    d = np.asarray(deltas, dtype=float)
    if d.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return mean, sd, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """``better`` (interval above 0), ``worse`` (below 0) or ``not resolved`` (contains 0, or unknown)."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not resolved"


def seeds_to_resolve(effect: float, sd: float, confidence: float = CONFIDENCE) -> int | None:
    """Fewest paired seeds ``n`` whose interval half-width ``t(n-1) * sd / sqrt(n)`` is below ``|effect|``,
    taking the measured mean and std as the truth; None when ``effect`` is 0, ``sd`` unknown, or more
    than :data:`MAX_SEEDS` would be needed."""
    if not (sd == sd and effect == effect) or effect == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, MAX_SEEDS + 1):
        if float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) < abs(effect):
            return n
    return None


def paired_table(runs: pd.DataFrame, reference: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per variant of ``runs`` (columns ``variant``, ``seed``, ``val_miou``; one budget): seeds,
    mean and std of val mIoU, and against ``reference`` (paired on the seeds both have) ``n_paired``,
    ``delta``, ``delta_sd``, ``ci_low``, ``ci_high``, ``verdict`` and ``seeds_needed`` (for an unresolved
    variant: paired seeds at which its measured delta and spread would be resolved)."""
    ref = runs[runs["variant"] == reference].set_index("seed")["val_miou"]
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        by_seed = group.set_index("seed")["val_miou"]
        row: dict[str, Any] = {
            "variant": variant,
            "seeds": len(by_seed),
            "val_miou": float(by_seed.mean()),
            "val_miou_sd": float(by_seed.std(ddof=1)) if len(by_seed) > 1 else math.nan,
        }
        if variant == reference:
            row.update(
                n_paired=len(by_seed),
                delta=0.0,
                delta_sd=math.nan,
                ci_low=math.nan,
                ci_high=math.nan,
                verdict="reference",
                seeds_needed=None,
            )
        else:
            common = by_seed.index.intersection(ref.index)
            mean, sd, low, high = t_interval((by_seed[common] - ref[common]).tolist(), confidence)
            v = verdict(low, high)
            row.update(
                n_paired=len(common),
                delta=mean,
                delta_sd=sd,
                ci_low=low,
                ci_high=high,
                verdict=v,
                seeds_needed=seeds_to_resolve(mean, sd, confidence) if v == "not resolved" else None,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def noise_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed noise of one variant per budget: ``iters``, ``seeds``, mean and std (ddof 1) of val mIoU, the
    std of the difference of two seeds (``sqrt(2)`` x std, what an unpaired comparison of one run each
    would face) and mean training minutes per run. ``runs``: columns ``iters``, ``seed``, ``val_miou``,
    ``train_minutes``."""
    rows = []
    for _, group in runs.groupby("iters"):
        sd = float(group["val_miou"].std(ddof=1)) if len(group) > 1 else math.nan
        rows.append(
            {
                "iters": int(group["iters"].iloc[0]),
                "seeds": len(group),
                "val_miou": float(group["val_miou"].mean()),
                "seed_sd": sd,
                "two_run_diff_sd": math.sqrt(2) * sd,
                "train_minutes": float(group["train_minutes"].mean()),
            }
        )
    return pd.DataFrame(rows)
