"""The ablation sweep's reports: ``ablations.{md,csv}`` (paired deltas), ``ablations_noise.{md,csv}`` (seed
noise per budget), ``ablations_units.csv`` (every unit file) and ``figures/ablations.png`` (deltas with their
intervals around 0). Written by notebook 02 and ``dabnet ablations``, always from the unit files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

from ..atomic_files import write_bytes_atomic
from ..data.datasets import get_info
from . import ablations as A
from .ablation_stats import CONFIDENCE
from .ablation_sweep import Sweep, SweepTables, build_tables, interpretation, missing_note
from .ablation_units import Unit
from .reports import hardware_summary, provenance, write_table

_VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "not resolved": "tab:grey"}


def budget_line(tables: SweepTables, batch: int, crop: Sequence[int], train_split: str, val_split: str) -> str:
    """The table's budget in words: iterations, batch, crop, splits, seeds and minutes per run."""
    t = tables.table
    minutes = (
        f"; {t['train_minutes'].min():.1f}-{t['train_minutes'].max():.1f} min of training per run" if len(t) else ""
    )
    return (
        f"{tables.budget} iterations of batch {batch} per run (lr warm-up {A.WARMUP_FRACTION:.0%}, poly to 0), "
        f"{train_split} -> {val_split}, crop {crop[0]}x{crop[1]}, seeds {', '.join(map(str, tables.seeds)) or '-'}"
        f" (the same for every variant){minutes}"
    )


def plot_deltas(tables: SweepTables, path: Path, title: str) -> Path:
    """Dot-and-whisker plot of each variant's delta and interval, sorted, around 0 (the reference)."""
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = tables.table
    t = t[t["verdict"] != "reference"].sort_values("delta") if len(t) else t.assign(variant=[], delta=[])
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(t), 2) + 1.2), layout="constrained")
    ax.axvline(0, color="black", lw=1)
    for y, row in enumerate(t.to_dict("records")):
        colour = _VERDICT_COLOURS.get(row["verdict"], "tab:grey")
        if row["ci_low"] == row["ci_low"]:  # NaN: no interval
            ax.plot([row["ci_low"], row["ci_high"]], [y, y], color=colour, lw=2)
        ax.plot(row["delta"], y, "o", color=colour)
    ax.set_yticks(range(len(t)), list(t["variant"]))
    ax.set_xlabel(
        f"val mIoU delta vs {A.REFERENCE} (points), {int(CONFIDENCE * 100)}% interval; "
        "green better, red worse, grey not resolved"
    )
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_ablation_reports(
    tables: SweepTables, reports_dir: Path, dataset: str, profile: str, budget: str, command: str
) -> list[Path]:
    """Write every ablation report under ``reports_dir``; returns the paths."""
    meta = provenance(
        profile,
        budget,
        command,
        extra={
            "hardware": "training: per unit in ablations_units.csv; "
            f"cpu_ms_360x480 (eager, batch 1): {hardware_summary()}"
        },
    )
    notes = interpretation(tables)
    if line := missing_note(tables.missing, command):
        notes.append(line)
    if tables.flagged:
        notes.append(
            f"{len(tables.flagged)} unit file(s) left out of the statistics: "
            + "; ".join(f"{name} ({', '.join(why)})" for name, why in sorted(tables.flagged.items()))
        )
    notes.append(A.PAPER_NOTE)
    paths = list(
        write_table(
            tables.table,
            reports_dir / "ablations",
            meta,
            f"{dataset}: DAB ablations (val mIoU %, paired over seeds)",
            notes,
        )
    )
    noise_notes = [
        "Seed noise of the reference variant per budget (same recipe, lr warm-up "
        f"{A.WARMUP_FRACTION:.0%} of the budget then poly to 0): `seed_sd` is the std (n-1) of val mIoU "
        "over seeds; `two_run_diff_sd` what a comparison of one run each would face."
    ]
    paths += write_table(
        tables.noise,
        reports_dir / "ablations_noise",
        {**meta, "budget": "per row", "hardware": "per unit in ablations_units.csv"},
        f"{dataset}: seed noise of `{A.REFERENCE}` per budget",
        noise_notes,
    )
    units_csv = reports_dir / "ablations_units.csv"
    write_bytes_atomic(units_csv, tables.runs.to_csv(index=False).encode())
    paths.append(units_csv)
    paths.append(plot_deltas(tables, reports_dir / "figures" / "ablations.png", budget))
    return paths


def rebuild_reports(
    sweep: Sweep, units: Sequence[Unit], budget: int, reports_dir: Path, command: str
) -> tuple[SweepTables, list[Path]]:
    """Read every unit file of ``sweep``, compare with the planned ``units`` (the table is the ones at
    ``budget``), add params, GFLOPs and this machine's CPU latency per variant, and write every report."""
    num_classes = get_info(sweep.dataset).num_classes
    tables = build_tables(
        sweep,
        [u for u in units if u.iters == budget],
        budget,
        costs=lambda v: A.variant_costs(A.VARIANTS[v][0], num_classes),
    )
    r = sweep.recipe(Unit(A.REFERENCE, 0, budget))
    line = budget_line(tables, r.batch_size, r.crop_size, r.train_split, r.val_split or "val")
    return tables, write_ablation_reports(tables, Path(reports_dir), sweep.dataset, sweep.profile, line, command)
