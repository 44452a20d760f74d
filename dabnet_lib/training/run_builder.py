"""What :func:`~dabnet_lib.training.engine.fit` trains with, built from a recipe in this order (the order the
random streams are drawn in): the data (splits, RAM caches, batches per epoch), the normalisation, how to
train here (precision, layout, compile), the network and its wrappers, the optimiser and the schedule; then,
per resolution stage, the loader and the loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import DatasetInfo, SegmentationDataset, build_dataset, get_info, subset
from ..data.host_memory import plan_caches
from ..data.statistics import statistics
from ..data.transforms import TrainTransform
from ..devices import to_memory_format
from ..errors import DabnetError
from ..model.dabnet import DABNet, DABNetConfig
from ..model.fast_ops import fast_ops_rule, use_fast_ops
from . import distributed as D
from .autotune import TrainingChoice, choose
from .deep_supervision import AuxiliaryHead, DeepSupervised, WithAuxiliary, build_head
from .losses import build_loss
from .recipes import Recipe
from .schedule import WarmupPolyLR
from .step import TrainingLayout, autocast_dtype, training_layout
from .train_state import TrainState


@dataclass(frozen=True)
class TrainingData:
    """The splits of a run and how they are batched (per process under DDP)."""

    train: SegmentationDataset
    val: SegmentationDataset | None  # None when the recipe does not validate
    val_seen: bool  # the training split holds the val images (nothing is selected on val then)
    batch: int  # images per step and process
    iters_per_epoch: int
    total_iters: int  # the iteration budget: epochs x iters_per_epoch, or max_iters when lower


def build_data(
    recipe: Recipe, data_root: Path, ctx: D.DistContext, show: bool, log: Callable[[str], None]
) -> TrainingData:
    """The training (and val) split, decoded once into RAM when it fits the budget, else per access (same
    samples either way); DabnetError when the batch does not divide over the processes or fill one step."""
    full_train = build_dataset(recipe.dataset, data_root, recipe.train_split)
    val, val_seen = None, False
    if recipe.val_split and recipe.val_every > 0:
        val = build_dataset(recipe.dataset, data_root, recipe.val_split)
        val_seen = D.overlap(full_train, val)
        subset(val, recipe.val_max_images, spread=False)
    train = subset(full_train, recipe.max_images)
    plans = plan_caches([train, val], recipe.cache_ram_fraction, ctx.local_world_size)
    D.barrier(ctx)  # every local rank measured free memory before any fills its cache
    for plan in plans:
        plan.apply(show)
        log(plan.reason)
    if recipe.batch_size % ctx.world_size:
        raise DabnetError(f"batch_size {recipe.batch_size} must be divisible by the {ctx.world_size} DDP processes")
    batch = recipe.batch_size // ctx.world_size
    per_epoch = len(train) // ctx.world_size // batch
    if per_epoch == 0:
        raise DabnetError(
            f"{recipe.dataset} {recipe.train_split} has {len(train)} images, fewer than one batch of "
            f"{batch} per process: lower batch_size or raise max_images"
        )
    epochs_iters = recipe.epochs * per_epoch
    total = epochs_iters if recipe.max_iters is None else min(epochs_iters, recipe.max_iters)
    return TrainingData(train, val, val_seen, batch, per_epoch, total)


@dataclass(frozen=True)
class Normalization:
    """Input normalisation (RGB, 0..255 units) and the loss's class weights, as the recipe asks."""

    mean: tuple[float, ...]
    std: tuple[float, ...] | None
    class_weights: torch.Tensor | None  # float32 (C,)


def build_normalization(recipe: Recipe, info: DatasetInfo, train: SegmentationDataset, show: bool) -> Normalization:
    """Values the recipe names ``"dataset"`` come from the training split's statistics (cached), ``"official"``
    / ``"none"`` from the dataset's official mean or nothing, the rest as given."""
    wanted = (recipe.mean, recipe.std, recipe.class_weights)
    stats = statistics(train, progress=show) if "dataset" in wanted else {}

    def pick(name: str, value: Any, official: Any) -> Any:
        return stats[name] if value == "dataset" else official if value in ("official", "none") else value

    mean = pick("mean", recipe.mean, info.official_mean)
    std, weights = pick("std", recipe.std, None), pick("class_weights", recipe.class_weights, None)
    return Normalization(
        tuple(float(v) for v in mean),
        None if std is None else tuple(float(v) for v in std),
        None if weights is None else torch.tensor([float(v) for v in weights]),
    )


def choose_how_to_train(
    recipe: Recipe,
    saved: dict[str, Any] | None,
    device: torch.device,
    info: DatasetInfo,
    cfg: DABNetConfig,
    batch: int,
    ctx: D.DistContext,
    log: Callable[[str], None],
) -> TrainingChoice:
    """Precision, layout and compile for this run (see :mod:`dabnet_lib.training.autotune`); a resumed run
    keeps the choice its checkpoint recorded (``saved``) unless the recipe sets amp, channels_last, compile or
    fast_ops explicitly; under DDP rank 0 decides for all."""
    all_auto = all(v == "auto" for v in (recipe.amp, recipe.channels_last, recipe.compile, recipe.fast_ops))
    choice: TrainingChoice | None = None
    if saved and all_auto:  # explicit recipe values win over the checkpoint's choice
        choice = TrainingChoice.from_dict(saved, source="checkpoint")
    elif ctx.is_main:
        fast = fast_ops_rule(device) if recipe.fast_ops == "auto" else bool(recipe.fast_ops)
        choice = choose(
            recipe.amp,
            recipe.channels_last,
            recipe.compile,
            device,
            info.num_classes,
            cfg,
            recipe.crop_size,
            batch,
            torch.get_num_threads(),
            log=log,
            fast_ops=fast,
            bn_prelu=recipe.fused_bn_prelu,
        )
    choice = D.broadcast_object(choice, ctx)
    for line in choice.describe():
        log(line)
    return choice


@dataclass(frozen=True)
class Networks:
    """The three handles of the model being trained."""

    net: nn.Module  # the network: its weights are saved, validated and digested
    eager: nn.Module  # what a step runs without compile: net (or net with its auxiliary head), in DDP under torchrun
    compiled: nn.Module  # eager under torch.compile when the choice compiles, else eager itself
    aux_head: AuxiliaryHead | None = None  # training-only head on stage 1 (recipe aux_weight > 0), else None

    def parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the network's parameters, then the auxiliary head's."""
        head = [] if self.aux_head is None else list(self.aux_head.parameters())
        return [*self.net.parameters(), *head]


def build_networks(
    recipe: Recipe,
    info: DatasetInfo,
    cfg: DABNetConfig,
    choice: TrainingChoice,
    layout: TrainingLayout,
    device: torch.device,
    ctx: D.DistContext,
) -> Networks:
    """DABNet initialised from the recipe's seed, with the chosen fast ops (and the recipe's fused BN+PReLU), in
    the layout's memory format on ``device``; SyncBatchNorm and DDP under torchrun; torch.compile'd lazily (one
    static graph per crop size, compiled at the first step). With ``recipe.aux_weight > 0`` a step runs the
    network with its auxiliary head (:class:`~dabnet_lib.training.deep_supervision.DeepSupervised`)."""
    torch.manual_seed(recipe.seed)
    dabnet = DABNet(info.num_classes, cfg)
    head = build_head(dabnet, recipe.seed) if recipe.aux_weight > 0 else None
    net: nn.Module = use_fast_ops(dabnet, choice.fast_ops, bn_prelu=recipe.fused_bn_prelu)
    if recipe.sync_bn and ctx.enabled:
        if device.type != "cuda":
            raise DabnetError("sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): drop --sync-bn on CPU")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = to_memory_format(net, layout.memory_format, device)
    eager: nn.Module = net
    if head is not None:
        head = to_memory_format(head, layout.memory_format, device)
        eager = DeepSupervised(dabnet, head)  # dabnet is net: fast ops, SyncBatchNorm and .to() work in place
    if ctx.enabled:
        eager = nn.parallel.DistributedDataParallel(eager, device_ids=[device.index] if device.type == "cuda" else None)
    return Networks(net, eager, layout.compile(eager) if choice.compile else eager, head)


def build_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    """Adam (betas, eps) or SGD with momentum, at the recipe's lr and weight decay.

    The step runs over all parameter tensors at once: with ``recipe.fused_optimizer`` as torch's fused
    kernel (DABNet's 273 tensors on a quiet 2-core Sapphire Rapids, 2 threads, ``scripts/measure_cpu_step_parts.py``:
    3.3 ms per Adam step against 15.6 for torch's CPU default, the per-tensor loop; not bit-identical to it),
    else as the ``foreach`` kernels (10.0 ms), which give the per-tensor loop's values bit for bit (tested)."""
    impl: dict[str, Any] = {"fused": True} if recipe.fused_optimizer else {"foreach": True}
    if recipe.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=recipe.lr, betas=recipe.betas, eps=recipe.adam_eps, weight_decay=recipe.weight_decay, **impl
        )
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, **impl)


def build_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, total_iters: int, budget_s: float | None
) -> WarmupPolyLR:
    """Warm-up then poly per iteration, towards whichever budget (iterations or seconds) ends first."""
    return WarmupPolyLR(optimizer, total_iters, recipe.warmup_iters, recipe.warmup_ratio, recipe.poly_power, budget_s)


def stage_geometry(recipe: Recipe, stage: int) -> tuple[float, tuple[int, int]]:
    """``(base scale, crop (H, W))`` of resolution stage 0 (the first) or 1 (the final)."""
    if stage == 0:
        return recipe.base_scale, recipe.crop_size
    return recipe.final_base_scale, recipe.final_crop_size or recipe.crop_size


@dataclass(frozen=True)
class StageData:
    """The batches and the loss of one resolution stage."""

    stage: int
    loader: DataLoader
    criterion: nn.Module


def build_stage(
    recipe: Recipe,
    stage: int,
    data: TrainingData,
    norm: Normalization,
    info: DatasetInfo,
    sampler: D.EpochSampler,
    device: torch.device,
) -> StageData:
    """Augmented batches at the stage's crops (sample order and augmentation seeded per (seed, epoch, index))
    and the loss (OHEM keeps at least 1/16 of a batch's pixels unless the recipe says otherwise). Drop the
    previous stage's loader first: its worker processes end with it."""
    scale, crop = stage_geometry(recipe, stage)
    transform = TrainTransform(
        crop,
        recipe.scales,
        mean=norm.mean,
        std=norm.std,
        ignore_index=info.ignore_index,
        mirror=recipe.mirror,
        base_scale=scale,
        color_jitter=recipe.color_jitter,
        class_crop=recipe.class_crop,
        max_class_ratio=recipe.max_class_ratio,
    )
    samples = D.SeededSamples(data.train, transform, recipe.seed)
    loader = D.make_loader(samples, sampler, data.batch, recipe.num_workers, device.type == "cuda")
    kw: dict[str, Any] = {}
    if recipe.loss == "ohem":
        kw = {"thresh": recipe.ohem_thresh, "min_kept": recipe.ohem_min_kept or data.batch * crop[0] * crop[1] // 16}
    criterion = build_loss(
        recipe.loss,
        info.ignore_index,
        weight=norm.class_weights,
        lovasz_weight=recipe.lovasz_weight,
        lovasz_stride=recipe.lovasz_stride,
        **kw,
    )
    if recipe.aux_weight > 0:
        criterion = WithAuxiliary(criterion, info.num_classes, recipe.aux_weight)
    return StageData(stage, loader, criterion.to(device))


def thread_plan(recipe: Recipe, device: torch.device, ctx: D.DistContext) -> tuple[int, D.ThreadTuner | None]:
    """``(threads, tuner)``: the recipe's thread count (default: this process's share of the cores) and, for
    ``threads="auto"`` on a CPU without DDP, the tuner that re-chooses it while training (it sets the count)."""
    cores = max(1, (os.cpu_count() or 1) // ctx.local_world_size)
    tuner = (
        D.ThreadTuner((max(1, cores // 2), cores))
        if recipe.threads == "auto" and device.type == "cpu" and not ctx.enabled
        else None
    )
    return (cores if recipe.threads in (None, "auto") else int(recipe.threads)), tuner


@dataclass
class TrainingRun:
    """Everything one :func:`~dabnet_lib.training.engine.fit` session trains with (see :func:`build_run`)."""

    recipe: Recipe
    info: DatasetInfo
    device: torch.device
    ctx: D.DistContext
    data: TrainingData
    norm: Normalization
    choice: TrainingChoice
    amp: torch.dtype | None  # autocast dtype, None for full precision
    layout: TrainingLayout
    nets: Networks
    state: TrainState  # with the optimizer, scheduler and scaler
    sampler: D.EpochSampler
    budget_s: float | None  # wall-time budget (recipe minutes), None for none


def build_run(
    recipe: Recipe,
    data_root: Path,
    device: torch.device,
    ctx: D.DistContext,
    saved_choice: dict[str, Any] | None,
    hardware: str,
    show: bool,
    log: Callable[[str], None],
) -> TrainingRun:
    """Data, normalisation, the training choice (``saved_choice``: a resumed checkpoint's), networks,
    optimiser, schedule and a fresh :class:`TrainState`; ``show`` draws progress bars, ``log`` prints always."""
    info = get_info(recipe.dataset)
    data = build_data(recipe, data_root, ctx, show, log)
    budget_s = recipe.minutes * 60.0 if recipe.minutes else None
    norm = build_normalization(recipe, info, data.train, show)
    cfg = DABNetConfig.from_dict(recipe.model_config)
    choice = choose_how_to_train(recipe, saved_choice, device, info, cfg, data.batch, ctx, log)
    amp = autocast_dtype(choice.amp, device)
    layout = training_layout(choice.channels_last, amp, device)
    if layout.note:
        log(layout.note)
    nets = build_networks(recipe, info, cfg, choice, layout, device, ctx)
    optimizer = build_optimizer(recipe, nets.parameters())
    state = TrainState(
        model=nets.net,
        aux_head=nets.aux_head,
        optimizer=optimizer,
        scheduler=build_scheduler(recipe, optimizer, data.total_iters, budget_s),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        recipe=recipe.to_dict(),
        num_classes=info.num_classes,
        model_config=cfg.to_dict(),
        dataset=info.name,
        mean=list(norm.mean),
        std=None if norm.std is None else list(norm.std),
        val_seen=data.val_seen,
        world_size=ctx.world_size,
        training_choice=choice.to_dict(),
        hardware=hardware,
    )
    sampler = D.EpochSampler(len(data.train), recipe.seed, ctx)
    return TrainingRun(recipe, info, device, ctx, data, norm, choice, amp, layout, nets, state, sampler, budget_s)
