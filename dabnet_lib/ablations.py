"""The paper's DAB ablations as configs (notebook 02): every variant trained under one budget.

A variant is a :class:`DABNetConfig`, never a fork of the model code. :func:`run_ablations` trains each
variant with the same recipe, seed and iteration budget (``train`` split, scored on held-out ``val``), then adds
params, GFLOPs at 360x480 and 512x1024 and eager CPU latency at 360x480. A second seed of the
default measures run-to-run noise, so a difference smaller than that is reported as not resolved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from .engine import fit
from .evaluation import evaluate_checkpoint
from .model import DABNet, DABNetConfig, count_parameters
from .paper import PAPER_ABLATION_NOTE
from .profiling import flops, measure
from .recipes import Recipe, get_recipe

#: name -> (config, what it changes). The first is the paper's network.
VARIANTS: dict[str, tuple[DABNetConfig, str]] = {
    "paper": (DABNetConfig(), "published DABNet: both branches, asymmetric depth-wise 3x1+1x3, injection"),
    "local_only": (DABNetConfig(branches="local"), "local (non-dilated) branch only"),
    "dilated_only": (DABNetConfig(branches="dilated"), "dilated branch only"),
    "square_dw": (DABNetConfig(dw_shape="square"), "square depth-wise 3x3 instead of 3x1+1x3"),
    "standard_conv": (DABNetConfig(branch_conv="standard"), "standard (dense) 3x1+1x3 convs in the branches"),
    "no_injection": (DABNetConfig(input_injection=False), "no input injection (down-sampled image not concatenated)"),
    "shallow_2_4": (DABNetConfig(blocks_1=2, dilations_1=(2, 2), blocks_2=4, dilations_2=(4, 8, 16, 16)),
                    "fewer DAB modules: 2 in stage 1, 4 in stage 2"),
    "no_dilation": (DABNetConfig(dilations_1=(1, 1, 1), dilations_2=(1,) * 6), "all dilation rates 1"),
    "dilation_2_4": (DABNetConfig(dilations_2=(2, 2, 4, 4, 4, 4)), "smaller stage-2 dilations (2,2,4,4,4,4)"),
    "kernel_5": (DABNetConfig(dw_kernel=5), "depth-wise kernel 5 (5x1+1x5)"),
}

#: The paper's val mIoU per variant where it is known (none is: see PAPER_NOTE).
PAPER_MIOU: dict[str, float] = {}
PAPER_NOTE = PAPER_ABLATION_NOTE

#: Per-variant training iterations of the ablation budget, per profile (None = the recipe's epochs).
#: Iterations, not minutes: every variant sees the same images whatever its speed (as the paper's
#: equal-epoch ablations), and the measured minutes stand in the table.
ABLATION_ITERS: dict[str, int | None] = {"smoke": None, "cpu": 300, "paper": None}


def ablation_recipe(dataset: str, profile: str, iters: int | None = None, **overrides: Any) -> Recipe:
    """The profile's recipe, trained on ``train`` and scored on held-out ``val`` (never trainval: the
    comparison must not score images it trained on), for ``iters`` iterations per variant (default
    :data:`ABLATION_ITERS`). With an iteration budget there is no wall-clock limit, no final
    full-resolution stage (it would cost 4x per step) and a fixed thread count (all cores), so that
    machine load changes the minutes, never what is trained."""
    base = get_recipe(dataset, profile)
    budget = ABLATION_ITERS.get(profile) if iters is None else iters
    # No torch.compile: its ~1 minute cold compile per variant would dominate a short budget.
    changes: dict[str, Any] = {"train_split": "train", "val_split": "val", "val_every": 0, "save_every": 0,
                               "compile": False}
    if budget is not None:
        changes.update(max_iters=int(budget), minutes=None, final_fraction=0.0)
    if base.threads == "auto":
        changes["threads"] = None
    changes.update(overrides)
    return base.replace(**changes)


def variant_costs(config: DABNetConfig, num_classes: int, latency_iters: int = 5) -> dict[str, Any]:
    """Params, GFLOPs at 360x480 and 512x1024, and eager CPU batch-1 latency (median ms) at 360x480."""
    model = DABNet(num_classes, config).eval()
    row: dict[str, Any] = {"params": count_parameters(model)}
    for h, w in ((360, 480), (512, 1024)):
        row[f"gflops_{h}x{w}"] = flops(model, (h, w))["gflops"]
    timing = measure(model, torch.randn(1, 3, 360, 480), warmup=2, iters=latency_iters)
    row["cpu_ms_360x480"] = timing["median_ms"]
    return row


def run_ablations(recipe: Recipe, data_root: str | Path, out_dir: str | Path,
                  variants: Mapping[str, tuple[DABNetConfig, str]] = VARIANTS,
                  noise_seeds: int = 1, quiet: bool = True, latency_iters: int = 5,
                  log: Callable[[str], None] = print,
                  callbacks: Callable[[str], Sequence[Any]] | None = None) -> pd.DataFrame:
    """Train every variant under ``recipe`` (same seed and budget) into ``out_dir/<variant>``.

    ``callbacks(name)`` gives each run's training callbacks (e.g. notebook 02's live progress).
    Runs are resumed when their ``last.pt`` exists (an interrupted sweep continues). ``noise_seeds``
    extra seeds of the first variant measure run-to-run noise (rows ``<first>_seed<k>``). Returns one
    row per run: variant, change, seed, params, GFLOPs, CPU latency, val mIoU (%), budget.
    """
    out_dir = Path(out_dir)
    first = next(iter(variants))
    runs = [(name, cfg, note, recipe.seed) for name, (cfg, note) in variants.items()]
    runs += [(f"{first}_seed{k}", variants[first][0], f"{variants[first][1]} (noise run)", recipe.seed + k)
             for k in range(1, noise_seeds + 1)]
    rows = []
    num_classes = None
    for i, (name, cfg, note, seed) in enumerate(runs, 1):
        log(f"[{i}/{len(runs)}] {name}: {note}")
        run_recipe = recipe.replace(model_config=cfg.to_dict(), seed=seed)
        summary = fit(run_recipe, data_root, out_dir / name, resume="auto", quiet=quiet,
                      callbacks=callbacks(name) if callbacks else ())
        result = evaluate_checkpoint(summary["last"], data_root, split=recipe.val_split or "val",
                                     progress=not quiet, limit=recipe.val_max_images)
        num_classes = num_classes or len(result["iou"])
        row = {"variant": name, "change": note, "seed": seed}
        row.update(variant_costs(cfg, num_classes, latency_iters))
        row.update({
            "val_miou": 100 * result["miou"],
            "paper_miou": PAPER_MIOU.get(name, math.nan),
            "train_minutes": summary["elapsed_s"] / 60,
            "iterations": summary["iterations"],
            "epochs": summary["epochs"],
        })
        rows.append(row)
    return add_noise_verdict(pd.DataFrame(rows), first)


def add_noise_verdict(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Add ``delta_vs_default`` (val mIoU points vs the reference variant) and ``resolved``: whether the
    difference exceeds the measured seed-to-seed spread of the reference (True/False; NaN without a
    noise run)."""
    table = table.copy()
    ref = table.loc[table["variant"] == reference, "val_miou"]
    noise_rows = table[table["variant"].str.startswith(f"{reference}_seed")]
    base = float(ref.iloc[0]) if len(ref) else math.nan
    table["delta_vs_default"] = table["val_miou"] - base
    if len(noise_rows):
        spread = float(max(abs(noise_rows["val_miou"] - base).max(), 0.0))
        table["resolved"] = [bool(abs(d) > spread) if not name.startswith(reference) else math.nan
                             for name, d in zip(table["variant"], table["delta_vs_default"])]
        table.attrs["noise_points"] = spread
    else:
        table["resolved"] = math.nan
        table.attrs["noise_points"] = math.nan
    return table
