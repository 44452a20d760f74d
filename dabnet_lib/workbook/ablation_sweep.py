"""Run an ablation sweep unit by unit (here, in shards, or on Ray) and rebuild its tables from the unit files.

Backends: ``local`` trains the pending units one after another in this process (the default; needs
nothing extra); ``ray`` fans them out over a Ray instance (this machine's cores or GPUs, or a cluster
given its address), each unit claiming ``threads`` CPUs, or one GPU on a GPU machine. Either way the
result of a unit is one JSON file (:mod:`dabnet_lib.workbook.ablation_units`) written by this process, so an
interrupted sweep continues where it stopped and ``--shard i/n`` processes or machines split the work.

:func:`build_tables` reads the unit files and returns the paired ablation table (one budget), the
noise study (the reference variant at every budget it has), and the missing and flagged units.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.datasets import build_dataset, get_info
from ..errors import DabnetError
from ..evaluation.evaluation import evaluate_checkpoint
from ..training.engine import fit
from ..training.recipes import Recipe
from . import ablations as A
from .ablation_stats import CONFIDENCE, MAX_SEEDS, noise_table, paired_table
from .ablation_units import (
    Unit,
    finished,
    plan_units,
    read_units,
    recipe_fingerprint,
    training_code_digest,
    unit_flags,
    write_unit,
)
from .reports import git_commit, hardware_summary

BACKENDS = ("local", "ray")
RAY_HINT = "pip install 'dabnet-workbook[ray]' (or: pip install ray==2.60.0)"


@dataclass(frozen=True)
class Sweep:
    """What a sweep trains and where: ``units_dir`` holds the result files (committed for the cpu profile),
    ``runs_dir`` each unit's resumable training run (git-ignored). ``overrides``: recipe fields set on top of
    :func:`~dabnet_lib.workbook.ablations.ablation_recipe` for every unit (e.g. ``threads``); speed-only fields keep
    units comparable, others make a new recipe (and flag older units)."""

    dataset: str
    profile: str
    data_root: Path
    units_dir: Path
    runs_dir: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def recipe(self, unit: Unit) -> Recipe:
        return A.unit_recipe(self.dataset, self.profile, unit, **self.overrides)

    def fingerprint(self) -> str:
        """The recipe fingerprint every comparable unit carries (seed, budget and variant left out)."""
        return recipe_fingerprint(self.recipe(Unit(A.REFERENCE, 0, 1)).to_dict())


def default_budget(sweep: Sweep) -> int:
    """The profile's iterations per unit (:data:`~dabnet_lib.workbook.ablations.ABLATION_ITERS`); where that is None,
    the recipe's epochs of the training split (full batches, as the engine counts them)."""
    budget = A.ABLATION_ITERS.get(sweep.profile)
    if budget is not None:
        return int(budget)
    r = A.ablation_recipe(sweep.dataset, sweep.profile, **sweep.overrides)
    images = len(build_dataset(sweep.dataset, sweep.data_root, r.train_split))
    if r.max_images is not None:
        images = min(images, r.max_images)
    return max(1, r.epochs * (images // r.batch_size))


def run_unit(sweep: Sweep, unit: Unit, quiet: bool = True, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one unit into ``runs_dir/<unit>`` (resuming an interrupted run), score ``val``, and return the
    record of its unit file: val mIoU and per-class IoU (%), minutes, speed, hardware, the training
    choice, the recipe with its fingerprint, the training-code digest and the commit."""
    recipe = sweep.recipe(unit)
    summary = fit(recipe, sweep.data_root, sweep.runs_dir / unit.name, resume="auto", quiet=quiet, callbacks=callbacks)
    result = evaluate_checkpoint(
        summary["last"], sweep.data_root, split=recipe.val_split or "val", progress=False, limit=recipe.val_max_images
    )
    names = get_info(sweep.dataset).classes
    return {
        "variant": unit.variant,
        "seed": unit.seed,
        "iters": unit.iters,
        "dataset": sweep.dataset,
        "profile": sweep.profile,
        "val_miou": 100 * float(result["miou"]),
        "iou": {n: (None if v != v else 100 * float(v)) for n, v in zip(names, result["iou"], strict=True)},
        "train_minutes": float(summary["elapsed_s"]) / 60,
        "images_per_s": summary.get("images_per_s"),
        "iterations": int(summary["iterations"]),
        "hardware": hardware_summary(recipe.device if recipe.device != "auto" else None),
        "training_choice": summary.get("training_choice"),
        "model_config": recipe.model_config,
        "recipe": recipe.to_dict(),
        "recipe_fingerprint": recipe_fingerprint(recipe.to_dict()),
        "code": training_code_digest(),
        "commit": git_commit(),
        "date": _dt.date.today().isoformat(),
    }


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DabnetError(f"the ray backend needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


def pending_units(sweep: Sweep, units: Sequence[Unit]) -> list[Unit]:
    """The units of ``units`` without a result file (a corrupt file raises, naming it)."""
    done = finished(sweep.units_dir, units)
    return [u for u in units if u not in done]


def run_sweep(
    sweep: Sweep,
    units: Sequence[Unit],
    backend: str = "local",
    ray_address: str | None = None,
    log: Callable[[str], None] = print,
    quiet: bool = True,
    callbacks: Callable[[Unit], Sequence[Any]] | None = None,
) -> list[Unit]:
    """Train every unit of ``units`` that has no result file yet and write its file as it finishes; returns
    the units trained now. ``callbacks(unit)``: that unit's training callbacks (local backend only)."""
    if backend not in BACKENDS:
        raise DabnetError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    A.check_variants(sorted({u.variant for u in units}))
    ray = _ray() if backend == "ray" else None  # fail before any training when Ray is missing
    todo = pending_units(sweep, units)
    log(
        f"ablation sweep: {len(units)} unit(s), {len(units) - len(todo)} finished, {len(todo)} to train "
        f"({backend}) -> {sweep.units_dir}"
    )
    if not todo:
        return []
    if ray is not None:
        return _run_on_ray(ray, sweep, todo, ray_address, log)
    for i, unit in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {unit.name}: {A.VARIANTS[unit.variant][1]}")
        record = run_unit(sweep, unit, quiet, callbacks(unit) if callbacks else ())
        path = write_unit(sweep.units_dir, record)
        log(f"    val mIoU {record['val_miou']:.2f}% in {record['train_minutes']:.1f} min -> {path}")
    return list(todo)


def _unit_resources(recipe: Recipe) -> dict[str, float]:
    """What one unit claims from Ray: one GPU on a CUDA run, else its thread count in CPUs."""
    import torch

    if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": float(recipe.threads or os.cpu_count() or 1)}


def _run_on_ray(
    ray: Any, sweep: Sweep, todo: Sequence[Unit], address: str | None, log: Callable[[str], None]
) -> list[Unit]:
    started_here = not ray.is_initialized()
    # ray.init installs its own SIGTERM handler in this process; give the caller's back afterwards.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        task = ray.remote(run_unit)
        pending = {task.options(**_unit_resources(sweep.recipe(u))).remote(sweep, u): u for u in todo}
        log(f"ray: {len(pending)} unit(s) submitted to {ray.cluster_resources()}")
        trained: list[Unit] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            record = ray.get(ready[0])
            path = write_unit(sweep.units_dir, record)
            trained.append(unit)
            log(f"[{len(trained)}/{len(todo)}] {unit.name}: val mIoU {record['val_miou']:.2f}% -> {path}")
        return trained
    finally:
        if started_here:
            ray.shutdown()
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)


@dataclass
class SweepTables:
    """What the unit files say: ``runs`` (one row per unit file, with ``flags``), ``table`` (paired deltas at
    ``budget``), ``noise`` (the reference variant per budget), ``missing`` (planned units without a file)
    and ``flagged`` (unit names with why they are left out of the statistics)."""

    runs: pd.DataFrame
    table: pd.DataFrame
    noise: pd.DataFrame
    budget: int
    seeds: tuple[int, ...]
    missing: list[Unit]
    flagged: dict[str, list[str]]


_RUN_COLUMNS = ["variant", "seed", "iters", "val_miou", "train_minutes", "hardware", "commit", "flags"]


def build_tables(
    sweep: Sweep,
    planned: Sequence[Unit],
    budget: int,
    reference: str = A.REFERENCE,
    costs: Callable[[str], Mapping[str, Any]] | None = None,
) -> SweepTables:
    """Rebuild the tables from every unit file of ``sweep.units_dir``. Units flagged by
    :func:`~dabnet_lib.workbook.ablation_units.unit_flags` stay in ``runs`` but out of the statistics.
    ``costs(variant)``: extra per-variant columns (params, GFLOPs, latency; see :func:`variant_costs`)."""
    fingerprint, code = sweep.fingerprint(), training_code_digest()
    rows, flagged = [], {}
    for rec in read_units(sweep.units_dir):
        expected = A.VARIANTS.get(rec["variant"])
        flags = unit_flags(rec, expected[0].to_dict() if expected else None, fingerprint, code)
        name = Unit(rec["variant"], int(rec["seed"]), int(rec["iters"])).name
        if flags:
            flagged[name] = flags
        rows.append({**{k: rec.get(k) for k in _RUN_COLUMNS[:-1]}, "flags": "; ".join(flags)})
    runs = pd.DataFrame(rows, columns=_RUN_COLUMNS)
    ok = runs[runs["flags"] == ""]
    at_budget = ok[ok["iters"] == budget]
    present = {Unit(r["variant"], int(r["seed"]), int(r["iters"])) for r in ok.to_dict("records")}
    missing = [u for u in planned if u not in present]
    table = paired_table(at_budget, reference) if len(at_budget) else pd.DataFrame()
    if len(table):
        table.insert(1, "change", [A.VARIANTS[v][1] for v in table["variant"]])
        minutes = at_budget.groupby("variant")["train_minutes"].mean()
        table["train_minutes"] = [float(minutes[v]) for v in table["variant"]]
        order = {v: i for i, v in enumerate(A.VARIANTS)}
        table = table.sort_values("variant", key=lambda s: s.map(order)).reset_index(drop=True)
        if costs is not None:
            extra = pd.DataFrame([{"variant": v, **costs(v)} for v in table["variant"]])
            table = table.merge(extra, on="variant", how="left")
    noise_runs = ok[ok["variant"] == reference]
    noise = noise_table(noise_runs) if len(noise_runs) else pd.DataFrame()
    # the design's seed list: the compared variants' seeds at the table budget (the reference may have more:
    # the noise study's seeds at the same budget)
    compared = [u for u in planned if u.iters == budget and u.variant != reference] or list(planned)
    seeds = tuple(sorted({u.seed for u in compared} or {int(s) for s in at_budget["seed"]}))
    return SweepTables(runs, table, noise, budget, seeds, missing, flagged)


def missing_note(missing: Sequence[Unit], command: str) -> str | None:
    """One line naming the planned units without a result file and the command that trains them."""
    if not missing:
        return None
    by_variant: dict[str, list[str]] = {}
    for u in missing:
        by_variant.setdefault(u.variant, []).append(f"seed {u.seed} @ {u.iters} it")
    listed = "; ".join(f"{v}: {', '.join(s)}" for v, s in by_variant.items())
    return f"{len(missing)} planned unit(s) have no result yet ({listed}); `{command}` trains them (it continues)."


def interpretation(tables: SweepTables, confidence: float = CONFIDENCE) -> list[str]:
    """Notes for a reader: the test used, what is resolved, and what would resolve the rest."""
    t = tables.table
    if t.empty:
        return ["No finished units at this budget yet."]
    lines = [
        f"Deltas are variant minus `{A.REFERENCE}` val mIoU (points), paired over seeds "
        f"{', '.join(map(str, tables.seeds))}; {int(confidence * 100)}% interval from Student's t with n-1 "
        "degrees of freedom; verdict `better`/`worse` when the interval excludes 0."
    ]
    others = t[t["verdict"] != "reference"]
    resolved = others[others["verdict"].isin(["better", "worse"])]
    lines.append(
        f"Resolved: {len(resolved)} of {len(others)} variants"
        + (
            f" ({', '.join(f'{v} {d:+.2f}' for v, d in zip(resolved['variant'], resolved['delta'], strict=True))})"
            if len(resolved)
            else ""
        )
        + "."
    )
    for row in others[others["verdict"] == "not resolved"].to_dict("records"):
        head = f"{row['variant']}: delta {row['delta']:+.2f} (sd of paired deltas {row['delta_sd']:.2f}) would"
        if row["n_paired"] < 2:
            lines.append(f"{row['variant']}: {row['n_paired']} paired seed(s), no interval yet.")
        elif row["seeds_needed"] is None or row["seeds_needed"] != row["seeds_needed"]:
            lines.append(
                f"{head} need more than {MAX_SEEDS} paired seeds at this budget: no effect this budget can show."
            )
        else:
            lines.append(f"{head} be resolved by about {int(row['seeds_needed'])} paired seeds at this budget.")
    return lines


def plan(
    sweep: Sweep,
    variants: Sequence[str] | str = "all",
    seeds: Sequence[int] | None = None,
    budget: int | None = None,
    noise_study: bool = False,
) -> tuple[list[Unit], int]:
    """The units of a sweep and its table budget: ``variants`` ("all" or names) x ``seeds`` (default the
    profile's :data:`~dabnet_lib.workbook.ablations.ABLATION_SEEDS`) at ``budget`` iterations (default
    :func:`default_budget`); ``noise_study`` puts first the reference variant at every
    :data:`~dabnet_lib.workbook.ablations.NOISE_BUDGETS` budget with
    :data:`~dabnet_lib.workbook.ablations.NOISE_SEEDS`."""
    names = list(A.VARIANTS) if variants == "all" else A.check_variants(list(variants))
    seeds = tuple(A.ABLATION_SEEDS[sweep.profile] if seeds is None else seeds)
    if not seeds:
        raise DabnetError("an ablation sweep needs at least one seed")
    budget = default_budget(sweep) if budget is None else int(budget)
    if budget < 1:
        raise DabnetError(f"--iters {budget}: a unit trains at least 1 iteration")
    units = plan_units(names, seeds, [budget])
    if noise_study:  # first: it decides whether the budget and seed count can resolve anything
        noise = plan_units([A.REFERENCE], A.NOISE_SEEDS[sweep.profile], A.NOISE_BUDGETS[sweep.profile])
        units = noise + [u for u in units if u not in noise]
    return units, budget
