"""Training recipes: the paper's per dataset and the budget profiles ``smoke``, ``cpu``, ``paper``.

A :class:`Recipe` is a frozen dataclass; ``get_recipe("camvid", "cpu")`` gives a profile and
``recipe.replace(lr=2e-3)`` (notebook parameters) or ``recipe.override(["lr=2e-3"])`` (the CLI's
``--set``) changes fields with validation: an unknown field or a bad value raises
:class:`~dabnet_lib.errors.DabnetError` naming the field and what is allowed.

Units: ``lr`` per iteration step, ``minutes`` of training wall time, sizes ``(H, W)`` in pixels,
``base_scale`` multiplies every random scale (0.5 = half-resolution training).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..data.datasets import DATASETS, SPLITS
from ..data.transforms import PAPER_SCALES
from ..errors import DabnetError
from ..model.dabnet import DABNetConfig

PROFILES = ("smoke", "cpu", "paper")
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

#: The official release's fixed OHEM class weights for Cityscapes, in trainId order (github.com/Reagan1311/DABNet).
CITYSCAPES_OHEM_WEIGHTS: tuple[float, ...] = (
    0.8373,
    0.918,
    0.866,
    1.0345,
    1.0166,
    0.9969,
    0.9754,
    1.0489,
    0.8786,
    1.0023,
    0.9539,
    0.9843,
    1.1116,
    0.9037,
    1.0865,
    1.0955,
    1.0865,
    1.1529,
    1.0507,
)

#: The CamVid ``cpu`` profile's budget (iterations = epochs x 58 on trainval at batch 8) and schedule: lr 2e-3 and
#: the first stage's CPU_CROP crops at the paper's scales (not half of them) were chosen on held-out val (issue #11,
#: README "what each change bought": 66.61 and 66.91 val mIoU on two seeds, against 65.04 with lr 1e-3 and half-scale
#: crops). CPU_CROP is also ``dabnet bench-train``'s default crop. Recipes that led on val but not on test are in
#: the same README table (e.g. 240x320 crops with an lr restart, row P11). The full-resolution stage's 0.19 of the
#: budget and class-uniform crops for every window (CPU_CLASS_CROP, share in [0, 1]) led on the sequence-held-out split
#: (README row SK2: 45.06 against 44.29) and then gave 59.08 test mIoU against 58.53 (row P15; 8,932
#: full-resolution-equivalent images, under the 9,500 cap).
CPU_EPOCHS, CPU_FINAL_FRACTION, CPU_LR, CPU_WARMUP = 50, 0.19, 2e-3, 200
CPU_CROP: tuple[int, int] = (180, 240)
CPU_CLASS_CROP = 1.0

_CHOICES: dict[str, tuple[Any, ...]] = {
    "dataset": DATASET_NAMES,
    "profile": (*PROFILES, "custom"),
    "train_split": SPLITS,
    "val_split": (*SPLITS, None),
    "optimizer": ("adam", "sgd"),
    "loss": ("ce", "ohem"),
    "amp": ("auto", "off", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a training run (see the module docstring for units).

    class_weights: ``"dataset"`` (1/ln(1.10+p) over the training split, cached), ``"none"``, or one
    float per class. mean: ``"official"`` (the release's RGB mean), ``"dataset"`` (computed) or 3
    floats; std: None (mean subtraction only, as the paper), ``"dataset"`` or 3 floats.
    final_fraction: the last fraction of the budget (time or iterations) trains at
    ``final_base_scale``/``final_crop_size`` (low resolution first, full resolution last); 0 = off.
    final_lr: when set, the lr restarts at this value when the final stage begins and decays by poly to 0 at
    the end of the budget (:meth:`~dabnet_lib.training.schedule.WarmupPolyLR.restart`); None = the main
    schedule's poly tail continues.
    val_every / save_every: epochs between validations / ``epoch_XXXX.pt`` files (0 = only at the end
    / never). minutes: wall-clock budget of the training loop (None = epochs only).
    cache_ram_fraction: share (0..1) of the host memory available at start that the decode-once caches of
    the training and validation splits may use, all local DDP ranks together; a split that does not fit is
    decoded per access in the loader (same results; see :mod:`dabnet_lib.data.host_memory`). 0 = never cache.
    """

    dataset: str = "camvid"
    profile: str = "paper"
    train_split: str = "trainval"
    val_split: str | None = "val"
    max_images: int | None = None  # training subset (evenly spaced), None = all
    val_max_images: int | None = None  # validation subset (first N), None = all
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # Adam only
    adam_eps: float = 1e-8
    weight_decay: float = 2e-4
    batch_size: int = 16  # global batch (split across DDP ranks)
    epochs: int = 1000
    max_iters: int | None = None  # hard cap on iterations (smoke runs)
    minutes: float | None = None
    crop_size: tuple[int, int] = (360, 480)
    scales: tuple[float, ...] = PAPER_SCALES
    base_scale: float = 1.0
    mirror: bool = True
    color_jitter: float = 0.0  # photometric augmentation strength s in [0, 1) (data.transforms.TrainTransform)
    class_crop: float = 0.0  # share of class-uniform crop windows in [0, 1] (data.transforms.TrainTransform)
    max_class_ratio: float = 1.0  # redraw windows one class fills more than this of, in (0, 1]; 1 = off
    final_fraction: float = 0.0
    final_base_scale: float = 1.0
    final_crop_size: tuple[int, int] | None = None
    final_lr: float | None = None
    loss: str = "ce"
    lovasz_weight: float = 0.0  # weight of the Lovász-softmax IoU term added to the loss (>= 0; 0 = off)
    lovasz_stride: int = 4  # the Lovász term's pixel grid: every 4th row and column (training.losses.WithLovasz)
    aux_weight: float = 0.0  # weight of a training-only auxiliary loss on stage 1 (>= 0, 0 = off; deep_supervision)
    class_weights: str | tuple[float, ...] = "dataset"
    ohem_thresh: float = 0.7
    ohem_min_kept: int | None = None  # None = per-rank batch * crop_h * crop_w / 16 (official)
    mean: str | tuple[float, float, float] = "official"
    std: str | tuple[float, float, float] | None = None
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    poly_power: float = 0.9
    val_every: int = 10
    val_scale: float = 1.0
    save_every: int = 50
    num_workers: int = 2
    cache_ram_fraction: float = 0.5  # decode-once RAM cache budget: share of available memory, all local ranks
    threads: int | str | None = None  # torch intra-op threads: N, None = all cores, "auto" = adaptive (CPU)
    seed: int = 1234
    device: str = "auto"
    model_config: dict[str, Any] = field(default_factory=dict)
    channels_last: bool | str = True  # or "auto": measured on CPU (dabnet_lib.training.autotune)
    amp: str = "auto"  # auto: CUDA bf16 where native, else fp16 + GradScaler; CPU measured
    sync_bn: bool = False
    fused_optimizer: bool = False  # one fused kernel for the whole optimizer step (see build_optimizer)
    fused_bn_prelu: bool = False  # with fast_ops: BN+PReLU as one compiled function on CPU (fast_ops.FastBNPReLU)
    compile: bool | str = False  # or "auto": measured on CPU
    fast_ops: bool | str = "auto"  # exact fast CPU backward ops (dabnet_lib.model.fast_ops); auto: on CPU

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name)))
        if (
            self.dataset == "cityscapes" and isinstance(self.class_weights, tuple) and len(self.class_weights) != 19
        ) or (self.dataset == "camvid" and isinstance(self.class_weights, tuple) and len(self.class_weights) != 11):
            _fail("class_weights", self.class_weights, "one weight per class of the dataset")

    # -- overrides ---------------------------------------------------------------------------------
    def replace(self, **overrides: Any) -> Recipe:
        """A copy with ``overrides`` applied; unknown fields or bad values raise DabnetError."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise DabnetError(
                f"recipe: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(field_names())}"
            )
        return dataclasses.replace(self, **overrides)

    def override(self, assignments: Iterable[str]) -> Recipe:
        """Apply ``["field=value", ...]`` (the CLI's ``--set``); values parse as JSON, else as text;
        ``360,480`` is accepted for pairs and lists."""
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise DabnetError(
                    f"recipe: --set expects field=value, got {item!r}; valid fields: {', '.join(field_names())}"
                )
            changes[key.strip()] = parse_value(text.strip())
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Recipe:
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise DabnetError(
                f"recipe: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(field_names())}"
            )
        return cls(**dict(values))

    def describe(self) -> str:
        """One line for logs: dataset, profile and the fields that differ from the paper recipe."""
        base, mine = paper_recipe(self.dataset).to_dict(), self.to_dict()
        cfg = {k: v for k, v in mine["model_config"].items() if v != base["model_config"][k]}
        mine["model_config"] = cfg or base["model_config"]
        diff = [f"{k}={v}" for k, v in mine.items() if k != "profile" and v != base[k]]
        return f"{self.dataset}/{self.profile}" + (f" ({', '.join(diff)})" if diff else " (paper recipe)")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Recipe)]


def parse_value(text: str) -> Any:
    """``--set`` value text -> Python: JSON (``1e-3``, ``true``, ``null``, ``[1, 2]``), else ``a,b`` lists, else
    text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.lower() in ("none", "null"):
        return None
    if "," in text:
        return [parse_value(part.strip()) for part in text.split(",")]
    return text


# -- validation ------------------------------------------------------------------------------------


def _fail(name: str, value: Any, expected: str) -> None:
    raise DabnetError(f"recipe field {name!r}: bad value {value!r}: expected {expected}")


def _num(
    name: str,
    value: Any,
    kind: type,
    lo: float | None = None,
    hi: float | None = None,
    optional: bool = False,
    lo_open: bool = False,
) -> Any:
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int and float(value) != int(value):
        ok = False
    if ok:
        value = kind(value)
        ok = (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        rng = (
            f" in [{lo}, {hi}]"
            if hi is not None
            else (f" > {lo}" if lo_open else f" >= {lo}")
            if lo is not None
            else ""
        )
        _fail(name, value, f"{'an integer' if kind is int else 'a number'}{rng}" + (" or null" if optional else ""))
    return value


def _floats(name: str, value: Any, n: int | None, lo_open: float | None = None) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n) or not value:
        _fail(name, value, f"a list of {n or 'one or more'} numbers")
    return tuple(_num(name, v, float, lo_open, lo_open=lo_open is not None) for v in value)


def _size(name: str, value: Any, optional: bool = False) -> tuple[int, int] | None:
    if value is None and optional:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        _fail(name, value, "a size H,W of two integers >= 16" + (" or null" if optional else ""))
    height, width = (_num(name, v, int, 16) for v in value)
    return height, width


def _check(name: str, value: Any) -> Any:
    """Validated (and normalised: lists -> tuples) value of field ``name``."""
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            _fail(name, value, "one of " + ", ".join(map(str, _CHOICES[name])))
        return value
    if name in ("lr", "adam_eps", "base_scale", "final_base_scale", "val_scale", "poly_power"):
        return _num(name, value, float, 0.0, lo_open=True)
    if name in ("momentum", "weight_decay", "lovasz_weight", "aux_weight"):
        return _num(name, value, float, 0.0)
    if name in ("warmup_ratio", "ohem_thresh", "final_fraction", "cache_ram_fraction", "class_crop"):
        return _num(name, value, float, 0.0, 1.0)
    if name == "max_class_ratio":
        return _num(name, value, float, 0.0, 1.0, lo_open=True)
    if name == "color_jitter":
        value = _num(name, value, float, 0.0, 1.0)
        if value >= 1.0:
            _fail(name, value, "a number in [0, 1)")
        return value
    if name in ("batch_size", "epochs", "lovasz_stride"):
        return _num(name, value, int, 1)
    if name in ("warmup_iters", "val_every", "save_every", "num_workers", "seed"):
        return _num(name, value, int, 0)
    if name == "threads" and value == "auto":
        return value
    if name in ("max_images", "val_max_images", "max_iters", "ohem_min_kept", "threads"):
        return _num(name, value, int, 1, optional=True)
    if name in ("minutes", "final_lr"):
        return _num(name, value, float, 0.0, optional=True, lo_open=True)
    if name == "betas":
        betas = _floats(name, value, 2)
        if not all(0 <= b < 1 for b in betas):
            _fail(name, value, "two numbers in [0, 1)")
        return betas
    if name == "scales":
        return _floats(name, value, None, lo_open=0.0)
    if name in ("crop_size", "final_crop_size"):
        return _size(name, value, optional=name == "final_crop_size")
    if name in ("channels_last", "compile", "fast_ops") and value == "auto":
        return value
    if name in ("mirror", "channels_last", "sync_bn", "compile", "fast_ops", "fused_optimizer", "fused_bn_prelu"):
        if not isinstance(value, bool):
            _fail(
                name,
                value,
                "true or false" + (' or "auto"' if name in ("channels_last", "compile", "fast_ops") else ""),
            )
        return value
    if name == "class_weights":
        value = "none" if value is None else value
        return value if value in ("dataset", "none") else _floats(name, value, None, lo_open=0.0)
    if name in ("mean", "std"):
        allowed = ("official", "dataset") if name == "mean" else (None, "dataset")
        return value if value in allowed else _floats(name, value, 3, lo_open=None if name == "mean" else 0.0)
    if name == "model_config":
        if not isinstance(value, Mapping):
            _fail(name, value, "a dict of DABNetConfig fields")
        try:
            return DABNetConfig.from_dict(value).to_dict()  # canonical: every field, lists not tuples
        except (TypeError, ValueError) as exc:
            raise DabnetError(f"recipe field 'model_config': {exc}") from None
    raise AssertionError(f"no validation rule for recipe field {name}")  # a field added without a rule


# -- recipes ---------------------------------------------------------------------------------------


def paper_recipe(dataset: str) -> Recipe:
    """The published recipe of ``dataset`` (Li & Kim, BMVC 2019, and the official release's training script)."""
    if dataset == "camvid":
        return Recipe(dataset="camvid", profile="paper")
    if dataset == "cityscapes":
        return Recipe(
            dataset="cityscapes",
            profile="paper",
            train_split="train",
            val_split="val",
            optimizer="sgd",
            lr=4.5e-2,
            weight_decay=1e-4,
            batch_size=8,
            crop_size=(512, 1024),
            loss="ohem",
            class_weights=CITYSCAPES_OHEM_WEIGHTS,
        )
    raise DabnetError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASET_NAMES)}")


def get_recipe(dataset: str, profile: str = "paper") -> Recipe:
    """The recipe of ``dataset`` ("camvid" | "cityscapes") for ``profile`` ("smoke" | "cpu" | "paper").

    - paper: as published (GPU), 1000 epochs.
    - smoke: seconds on a CPU: 8 training images, 4 validation images, 64x96 crops, 2 epochs on the
      ``train`` split (so that best.pt is selected on held-out ``val`` images), in-process loading, one
      thread (tiny tensors gain nothing from two, and one thread is immune to a busy machine), fp32
      eager (never measures or compiles).
    - cpu: this project's 2-core CPU budget, defined in iterations so that a commit trains the same
      model on any CPU (same seed, sample order and schedule; numerics aside): CamVid ``trainval`` (as
      the paper) for CPU_EPOCHS epochs on CPU_CROP (180x240: a quarter of a full image's pixels) crops at the
      paper's random scales, the last CPU_FINAL_FRACTION of them on full 360x480 crops (see
      :func:`~dabnet_lib.training.eta.final_stage_start` for the exact iteration); no validation inside
      the budget (val is part of trainval); the result is last.pt, scored on test by ``dabnet test``.
      Precision, layout and torch.compile are ``"auto"``: measured on the running machine
      (:mod:`dabnet_lib.training.autotune`); the optimizer step is torch's fused kernel, and an eager step
      runs each BN+PReLU pair as one compiled function (``fused_bn_prelu``; a compiled model fuses them anyway).
      ``minutes`` stays available as an optional time box.
    """
    base = paper_recipe(dataset)
    if profile == "paper":
        return base
    if profile == "smoke":
        camvid = dataset == "camvid"
        return base.replace(
            profile="smoke",
            train_split="train",
            val_split="val",
            max_images=8,
            val_max_images=4,
            batch_size=4 if camvid else 2,
            epochs=2,
            crop_size=(64, 96) if camvid else (64, 128),
            warmup_iters=2,
            val_every=1,
            save_every=1,
            num_workers=0,
            threads=1,
            val_scale=1.0 if camvid else 0.25,
            amp="off",
            compile=False,
        )
    if profile == "cpu":
        auto: dict[str, Any] = {
            "amp": "auto",
            "channels_last": "auto",
            "compile": "auto",
            "device": "cpu",
            "fused_optimizer": True,
            "fused_bn_prelu": True,
        }
        if dataset == "camvid":
            return base.replace(
                profile="cpu",
                batch_size=8,
                epochs=CPU_EPOCHS,
                crop_size=CPU_CROP,
                final_fraction=CPU_FINAL_FRACTION,
                class_crop=CPU_CLASS_CROP,
                final_base_scale=1.0,
                final_crop_size=(360, 480),
                lr=CPU_LR,
                warmup_iters=CPU_WARMUP,
                val_every=0,
                save_every=10,
                num_workers=0,
                threads="auto",
                **auto,
            )
        return base.replace(
            profile="cpu",
            batch_size=4,
            epochs=4,
            crop_size=(256, 512),
            base_scale=0.25,
            warmup_iters=200,
            val_every=1,
            val_scale=0.5,
            val_max_images=100,
            save_every=1,
            num_workers=0,
            threads="auto",
            **auto,
        )
    raise DabnetError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
