"""One ablation run = one *unit* (variant, seed, iteration budget) with its own small JSON result file.

The sweep (:mod:`dabnet_lib.workbook.ablation_sweep`) trains units and writes one file per unit into a units
folder (``reports/ablations/`` for the committed cpu profile); every table is rebuilt from these files.
A unit whose file exists is finished and never trained again, so a sweep continues where it stopped, in
another process (``--shard i/n``), on another machine or in a later session.

A unit file records what makes its number comparable: the model config, the recipe (fingerprinted without
seed and budget, which name the unit, and without speed-only fields), a digest of the training code and the
commit. :func:`unit_flags` compares a record with the current sweep: a unit from another config or other
training code is kept and shown, but flagged in the table. Two guards keep a finished sweep valid across
changes that do not alter what is trained: a recipe field added later is left out of the fingerprint while it
has its default value, and a change of the training code that keeps its numerics declares its new digest
equivalent in :data:`EQUIVALENT_TRAINING_CODE` (a test fails until it is declared one way or the other).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic_files import write_bytes_atomic
from ..errors import DabnetError
from ..paths import PACKAGE_DIR
from ..training.recipes import Recipe

#: Version of the unit file layout; files of another format are reported, never silently read.
UNIT_FORMAT = 1
#: Modules whose code decides a unit's val mIoU (model, fast ops, loss, augmentation, schedule, training
#: step, metric). A unit trained by other code in any of them is flagged.
TRAINING_CODE: tuple[str, ...] = (
    "model/dabnet.py",
    "model/fast_ops.py",
    "training/losses.py",
    "data/transforms.py",
    "training/schedule.py",
    "training/step.py",
    "training/metrics.py",
)
#: Groups of :func:`training_code_digest` values that train the same numbers. An edit of a TRAINING_CODE module
#: that leaves training numerics alone (a refactor, a docstring, an error message: run tests/test_model.py and
#: tests/test_fast_ops.py) adds its new digest to the group of the code it replaces; an edit that changes them
#: (a new op, another init, a loss change) starts a new group, and units of the old groups are flagged.
EQUIVALENT_TRAINING_CODE: tuple[frozenset[str], ...] = (
    # sessions 4-5: the committed cpu-profile sweep; 72a7e6cd281f: the same modules moved into sub-packages
    # (imports rewritten; smoke run weights digest 1186738dabbfc4a7 before and after); bccdcc12c16e: ruff
    # format (AST-identical), zip(strict=True), to_memory_format/TrainingLayout.compile, typed optional mean/std
    # (a smoke run's sha256 of the trained state dict, 1 thread, real CamVid: b6ca1877d5a5a273 before and after);
    # bc586c5d930f: checkpoint-reading messages only (refused-as-unsafe, first_line); test_model/test_fast_ops pass;
    # 73cceebb0376: ConfusionMatrix.update_unchecked replaces validation's PixelCounter (smoke run: weights digest
    # 1186738dabbfc4a7 and val mIoU 0.00676, 0.07475 on cc1372a and after, same machine);
    # 5ced5038316d: both edits merged (smoke run weights digest 1186738dabbfc4a7);
    # 8afab44a6394: the fused PReLU backward in fast_ops, bit-identical to the written-out one
    # (test_fused_prelu_backward_is_bit_identical_to_the_written_out_one; smoke weights digest 1186738dabbfc4a7);
    # 2d7f739ab4bd, 0f9f3c29c065: fast_ops.FastBNPReLU, opt-in (recipe field fused_bn_prelu, default off, pinned
    # off for the units; the modules stay the stock BNPReLU without it; smoke weights digest 1186738dabbfc4a7);
    # 632aa7a3dc96: the comment of its size threshold only; 90d9505f0f16: the final stage's optional lr restart
    # (recipe final_lr, default None = unchanged; smoke weights digest 1186738dabbfc4a7); 2507ccf05e2e: the restart
    # reuses lr_factor and time_progress (the same formula; smoke weights digest 1186738dabbfc4a7); 831857ad3ec1:
    # opt-in colour jitter (recipe color_jitter, default 0 draws no random number, pinned 0 for the units; smoke
    # weights digest a563952a9a05cef3 before and after on the AMD EPYC of session 12, 1 thread: the digest is per CPU);
    # 4740229a15e5: opt-in class-uniform crops and crop rejection (recipe class_crop 0 and max_class_ratio 1 draw
    # no random number, pinned off for the units; smoke weights digest a563952a9a05cef3 on the AMD EPYC, 1 thread);
    # 06341d614b2d: the rejection loop skips counting the last window (kept anyway; the same draws; smoke weights
    # digest a563952a9a05cef3); 054a5c1c0af9: the opt-in Lovász-softmax term (recipe lovasz_weight, default 0 builds
    # the same loss module, pinned 0 for the units; smoke weights digest a6437bd697515afb before and after on the
    # Zen3 of session 16, 1 thread); b6ea7c9ddf87: WithLovasz slices its grid for every stride (stride 1 = every
    # pixel, as before; smoke weights digest a6437bd697515afb); 22fd83f7e1a2: DABNet.forward_with_stage1 (forward
    # returns its logits; the opt-in auxiliary head of recipe aux_weight, default 0, pinned 0 for the units, reads
    # its features; smoke weights digest a6437bd697515afb before and after on the Zen3 of session 17, 1 thread)
    frozenset(
        {
            "d67f629a52e4",
            "72a7e6cd281f",
            "bccdcc12c16e",
            "bc586c5d930f",
            "73cceebb0376",
            "5ced5038316d",
            "8afab44a6394",
            "2d7f739ab4bd",
            "0f9f3c29c065",
            "632aa7a3dc96",
            "90d9505f0f16",
            "2507ccf05e2e",
            "831857ad3ec1",
            "4740229a15e5",
            "06341d614b2d",
            "054a5c1c0af9",
            "b6ea7c9ddf87",
            "22fd83f7e1a2",
        }
    ),
)
#: Recipe fields that the unit (variant, seed, budget) decides, left out of the recipe fingerprint, and fields
#: that change speed but not what is trained.
_UNIT_FIELDS = ("seed", "max_iters", "epochs", "warmup_iters", "model_config")
_SPEED_FIELDS = (
    "threads",
    "num_workers",
    "cache_ram_fraction",
    "channels_last",
    "compile",
    "fast_ops",
    "device",
    "save_every",
)


@dataclass(frozen=True, order=True)
class Unit:
    """One training run of the sweep: ``variant`` (a key of :data:`~dabnet_lib.workbook.ablations.VARIANTS`),
    ``seed`` (data order, augmentation and initialisation) and ``iters`` (training iterations)."""

    variant: str
    seed: int
    iters: int

    @property
    def name(self) -> str:
        """File-system name, e.g. ``paper__seed0__it600``."""
        return f"{self.variant}__seed{self.seed}__it{self.iters}"


def plan_units(variants: Sequence[str], seeds: Sequence[int], budgets: Sequence[int]) -> list[Unit]:
    """Every (variant, seed, budget) combination, in a stable order: budget, then seed, then variant (so that
    a partial sweep has the same seeds of every variant, the pairs a comparison needs)."""
    return [Unit(v, int(s), int(b)) for b in budgets for s in seeds for v in variants]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1 <= i <= n) -> ``(i, n)``; anything else raises :class:`DabnetError` naming the value."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise DabnetError(f"--shard {text!r}: expected i/n with whole numbers, e.g. 1/2") from None
    if n < 1 or not 1 <= i <= n:
        raise DabnetError(f"--shard {text}: shard i of n needs 1 <= i <= n (n >= 1), e.g. 1/{max(n, 2)}")
    return i, n


def shard_units(units: Sequence[Unit], i: int, n: int) -> list[Unit]:
    """Shard ``i`` of ``n`` (1-based): every n-th unit from the i-th; the n shards partition ``units``."""
    return list(units[i - 1 :: n])


def training_code_digest() -> str:
    """sha1 (12 hex digits) of the :data:`TRAINING_CODE` modules' source as it is now."""
    h = hashlib.sha1()
    for name in TRAINING_CODE:
        h.update(name.encode())
        h.update((PACKAGE_DIR / name).read_bytes())
    return h.hexdigest()[:12]


def same_training_code(a: str, b: str) -> bool:
    """Whether training-code digests ``a`` and ``b`` are equal or declared equivalent."""
    return a == b or any(a in group and b in group for group in EQUIVALENT_TRAINING_CODE)


def recipe_fingerprint(recipe: Mapping[str, Any]) -> str:
    """sha1 (12 hex digits) of a recipe dict without the unit's own and the speed-only fields, and without
    fields at their :class:`~dabnet_lib.training.recipes.Recipe` default (so that a field added to Recipe later, absent
    from older records, does not change the fingerprint of a recipe that leaves it at its default)."""
    defaults = Recipe().to_dict()
    kept = {
        k: v
        for k, v in recipe.items()
        if k not in _UNIT_FIELDS + _SPEED_FIELDS and not (k in defaults and _canonical(v) == _canonical(defaults[k]))
    }
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def record_fingerprint(record: Mapping[str, Any]) -> str:
    """The recipe fingerprint of a unit record under today's rule: recomputed from its stored ``recipe``."""
    if not isinstance(record.get("recipe"), Mapping):
        return str(record.get("recipe_fingerprint"))
    return recipe_fingerprint(record["recipe"])


def unit_path(units_dir: str | os.PathLike[str], unit: Unit) -> Path:
    """``units_dir/<unit name>.json``."""
    return Path(units_dir) / f"{unit.name}.json"


def write_unit(units_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write one unit's record atomically (a temporary file renamed into place: never half-written)."""
    unit = Unit(record["variant"], int(record["seed"]), int(record["iters"]))
    path = unit_path(units_dir, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": UNIT_FORMAT, **record}, indent=1, default=str) + "\n"
    write_bytes_atomic(path, text.encode())
    return path


_REQUIRED = ("variant", "seed", "iters", "val_miou", "model_config", "recipe_fingerprint", "code", "commit")


def read_unit(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One unit file -> its record; a corrupt, foreign or misnamed file raises :class:`DabnetError`
    naming the file and the fix."""
    path = Path(path)
    fix = f"delete {path} to train the unit again"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DabnetError(f"{path}: not a readable unit file ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(record, dict) or record.get("format") != UNIT_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise DabnetError(f"{path}: not a unit file of format {UNIT_FORMAT} (found {found!r}); {fix}")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise DabnetError(f"{path}: unit file lacks {', '.join(missing)}; {fix}")
    try:
        unit = Unit(str(record["variant"]), int(record["seed"]), int(record["iters"]))
        float(record["val_miou"])
    except (TypeError, ValueError) as e:
        raise DabnetError(f"{path}: unit file has a bad value ({e}); {fix}") from None
    if path.stem != unit.name:
        raise DabnetError(f"{path}: holds unit {unit.name}, not {path.stem}; rename it to {unit.name}.json or {fix}")
    return record


def read_units(units_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every unit file in ``units_dir`` (sorted by name); raises on the first bad file (see :func:`read_unit`)."""
    folder = Path(units_dir)
    return [read_unit(p) for p in sorted(folder.glob("*__seed*__it*.json"))] if folder.is_dir() else []


def finished(units_dir: str | os.PathLike[str], units: Iterable[Unit]) -> set[Unit]:
    """The units of ``units`` whose result file exists and reads (a bad file raises, naming it)."""
    return {u for u in units if unit_path(units_dir, u).is_file() and read_unit(unit_path(units_dir, u))}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def unit_flags(
    record: Mapping[str, Any], expected_config: Mapping[str, Any] | None, fingerprint: str, code: str
) -> list[str]:
    """Why a unit is not comparable with the current sweep (empty: comparable): another model config for its
    variant name, another recipe, or other training code (with the commit that trained it)."""
    flags = []
    if expected_config is None:
        flags.append(f"variant {record['variant']!r} is not in VARIANTS")
    elif _canonical(record["model_config"]) != _canonical(expected_config):
        flags.append("other model config")
    if record_fingerprint(record) != fingerprint:
        flags.append("other recipe")
    if not same_training_code(str(record["code"]), code):
        flags.append(f"other training code (commit {record['commit']})")
    return flags
