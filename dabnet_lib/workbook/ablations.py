"""The paper's DAB ablations as configs (notebook 02, ``dabnet ablations``): variants, their recipe, costs.

A variant is a :class:`DABNetConfig`, never a fork of the model code. Every variant trains with the same
recipe and iteration budget on ``train`` and is scored on held-out ``val``, once per seed of one seed list
(paired: the same data order and augmentation per seed). :mod:`dabnet_lib.workbook.ablation_sweep` runs the
(variant, seed, budget) units and :mod:`dabnet_lib.workbook.ablation_stats` turns them into deltas with intervals.
"""

from __future__ import annotations

from typing import Any

import torch

from ..deploy.profiling import flops, measure
from ..errors import DabnetError
from ..model.dabnet import DABNet, DABNetConfig, count_parameters
from ..training.recipes import Recipe, get_recipe
from .ablation_units import Unit
from .paper import PAPER_ABLATION_NOTE

#: name -> (config, what it changes). The first is the paper's network.
VARIANTS: dict[str, tuple[DABNetConfig, str]] = {
    "paper": (DABNetConfig(), "published DABNet: both branches, asymmetric depth-wise 3x1+1x3, injection"),
    "local_only": (DABNetConfig(branches="local"), "local (non-dilated) branch only"),
    "dilated_only": (DABNetConfig(branches="dilated"), "dilated branch only"),
    "square_dw": (DABNetConfig(dw_shape="square"), "square depth-wise 3x3 instead of 3x1+1x3"),
    "standard_conv": (DABNetConfig(branch_conv="standard"), "standard (dense) 3x1+1x3 convs in the branches"),
    "no_injection": (DABNetConfig(input_injection=False), "no input injection (down-sampled image not concatenated)"),
    "shallow_2_4": (
        DABNetConfig(blocks_1=2, dilations_1=(2, 2), blocks_2=4, dilations_2=(4, 8, 16, 16)),
        "fewer DAB modules: 2 in stage 1, 4 in stage 2",
    ),
    "no_dilation": (DABNetConfig(dilations_1=(1, 1, 1), dilations_2=(1,) * 6), "all dilation rates 1"),
    "dilation_2_4": (DABNetConfig(dilations_2=(2, 2, 4, 4, 4, 4)), "smaller stage-2 dilations (2,2,4,4,4,4)"),
    "kernel_5": (DABNetConfig(dw_kernel=5), "depth-wise kernel 5 (5x1+1x5)"),
}

#: The paper's val mIoU per variant where it is known (none is: see PAPER_NOTE).
PAPER_MIOU: dict[str, float] = {}
PAPER_NOTE = PAPER_ABLATION_NOTE

#: The reference variant: every delta is a variant minus it, paired by seed.
REFERENCE = "paper"
#: Per-unit training iterations of the ablation table, per profile (None = the recipe's epochs).
#: Iterations, not minutes: every variant sees the same images whatever its speed or the CPU's, and the
#: measured minutes stand in the unit files. The cpu budget is the noise study's choice (README).
ABLATION_ITERS: dict[str, int | None] = {"smoke": None, "cpu": 300, "paper": None}
#: The seed list of every variant (paired design), per profile.
ABLATION_SEEDS: dict[str, tuple[int, ...]] = {"smoke": (0, 1), "cpu": (0, 1, 2), "paper": (0, 1, 2)}
#: The noise study: the reference variant at these budgets with these seeds, per profile.
#: Budgets of the noise study. cpu: 300 already met the <= 1.0-point seed std that the table budget needs,
#: so no longer budget is studied (a 1200-iteration row would cost 4 units of 4x a 300-iteration one and could
#: not change the choice).
NOISE_BUDGETS: dict[str, tuple[int, ...]] = {"smoke": (2, 4), "cpu": (300, 600), "paper": ()}
NOISE_SEEDS: dict[str, tuple[int, ...]] = {"smoke": (0, 1), "cpu": (0, 1, 2, 3), "paper": ()}
#: Warm-up as a share of an iteration budget (the lr then anneals to 0 at the budget's last iteration).
WARMUP_FRACTION = 0.05
#: Recipe values the committed unit files (reports/ablations/) were trained with, per (dataset, profile), kept
#: when the profile itself moves on (issue #11 tunes the CamVid ``cpu`` profile's training) so that those units
#: keep their recipe fingerprint and stay comparable: the ablation table asks which architecture knob matters,
#: under one fixed training recipe.
UNIT_RECIPE_PINS: dict[tuple[str, str], dict[str, Any]] = {
    ("camvid", "cpu"): {
        "lr": 1e-3,
        "base_scale": 0.5,
        "crop_size": (180, 240),
        "final_lr": None,
        "color_jitter": 0.0,
        "class_crop": 0.0,
        "max_class_ratio": 1.0,
        "loss": "ce",
        "lovasz_weight": 0.0,
        "aux_weight": 0.0,
        "fused_optimizer": False,
        "fused_bn_prelu": False,
    },
}


def check_variants(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` if every one is a key of :data:`VARIANTS`, else :class:`DabnetError` naming the unknown."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise DabnetError(f"unknown ablation variant(s) {', '.join(map(repr, unknown))}; known: {', '.join(VARIANTS)}")
    return list(names)


def ablation_recipe(dataset: str, profile: str, iters: int | None = None, **overrides: Any) -> Recipe:
    """The profile's recipe, trained on ``train`` and scored on held-out ``val`` (never trainval: the
    comparison must not score images it trained on), for ``iters`` iterations per run (default
    :data:`ABLATION_ITERS`). With an iteration budget: a warm-up of :data:`WARMUP_FRACTION` of it, the
    poly schedule ending at lr 0 on its last iteration, no wall-clock limit, no final full-resolution
    stage (4x per step), fp32 eager (the same numbers on every CPU, so that units from different machines
    pair; a cold torch.compile per run would dominate short budgets) and a fixed thread count (all cores
    unless overridden), so that machine load changes the minutes, never what is trained; and the
    :data:`UNIT_RECIPE_PINS` of the committed units."""
    base = get_recipe(dataset, profile)
    budget = ABLATION_ITERS.get(profile) if iters is None else iters
    changes: dict[str, Any] = {
        "train_split": "train",
        "val_split": "val",
        "val_every": 0,
        "save_every": 0,
        "compile": False,
        "amp": "off",
    }
    if budget is not None:
        budget = int(budget)
        changes.update(
            max_iters=budget,
            epochs=max(base.epochs, budget),
            minutes=None,
            final_fraction=0.0,
            warmup_iters=max(1, round(WARMUP_FRACTION * budget)),
        )
    if base.threads == "auto":
        changes["threads"] = None
    changes.update(UNIT_RECIPE_PINS.get((dataset, profile), {}))
    changes.update(overrides)
    return base.replace(**changes)


def unit_recipe(dataset: str, profile: str, unit: Unit, **overrides: Any) -> Recipe:
    """The recipe of one sweep unit: :func:`ablation_recipe` at the unit's budget, seed and variant config."""
    cfg = VARIANTS[check_variants([unit.variant])[0]][0]
    return ablation_recipe(dataset, profile, unit.iters, seed=unit.seed, model_config=cfg.to_dict(), **overrides)


def variant_costs(config: DABNetConfig, num_classes: int, latency_iters: int = 5) -> dict[str, Any]:
    """Params, GFLOPs at 360x480 and 512x1024, and eager CPU batch-1 latency (median ms) at 360x480."""
    model = DABNet(num_classes, config).eval()
    row: dict[str, Any] = {"params": count_parameters(model)}
    for h, w in ((360, 480), (512, 1024)):
        row[f"gflops_{h}x{w}"] = flops(model, (h, w))["gflops"]
    timing = measure(model, torch.randn(1, 3, 360, 480), warmup=2, iters=latency_iters)
    row["cpu_ms_360x480"] = timing["median_ms"]
    return row
