"""Distributed training plumbing, the deterministic order of training samples, CPU threads.

- :func:`setup` joins the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, nccl on CUDA. Without
  those variables it is a single process and every helper here is a no-op.
- :class:`EpochSampler` shuffles with :class:`~torch.utils.data.DistributedSampler` (seeded by
  ``(seed, epoch)``, sharded by rank) and can skip the first samples of an epoch (mid-epoch resume).
- :class:`SeededSamples` gives every sample its own augmentation stream seeded by
  ``(seed, epoch, index)``, so augmentation never depends on the worker count, the rank or where a
  run was resumed; :func:`make_loader` batches them in-process or with forked persistent workers.
- :class:`Shard` is one rank's share of a validation split, :func:`evaluate_sharded` merges the ranks'
  confusion matrices; :func:`subset` keeps N images of a split.
- :class:`ThreadTuner` picks the intra-op thread count of a CPU process while it trains.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

from ..data.datasets import SegmentationDataset
from ..errors import DabnetError
from ..machine import BUSY_CPU_SHARE, cpu_share
from .metrics import ConfusionMatrix
from .validation import evaluate


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (1 = no DDP), its device, the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    owns_group: bool = False  # True when setup() created the process group (teardown destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment (or one already initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
            dist.get_backend(),
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise DabnetError(
                f"LOCAL_RANK {local} needs CUDA device {local}, but only {count} CUDA device(s) are "
                f"visible: start at most {count} process(es) per node (torchrun --nproc_per_node="
                f"{max(1, count)}), or train on CPU with --device cpu"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistContext(
        dist.get_rank(),
        dist.get_world_size(),
        local,
        int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        backend,
        owns_group=True,
    )


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under DDP."""
    if device.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


def reduce_max(values: Sequence[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise maximum over ranks (stop flags, elapsed time), so every rank takes the same decision."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without DDP)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without DDP); picklable objects only."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: DDP syncs them only at the
    start of each forward, so after the last step each rank holds the statistics of its own batch."""
    if ctx.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) over the state dict's tensors in key order: equal digests = equal weights."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# -- sample order ------------------------------------------------------------------------------------


class _Indices(Dataset[int]):
    """``0 .. n-1`` as a Dataset: all that :class:`DistributedSampler` reads of it is its length."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` for this rank's share of a shuffled epoch of ``n`` samples.

    The order is :class:`DistributedSampler`'s (seed + epoch, ``drop_last`` so all ranks get the same
    count). ``set_epoch(epoch, skip)`` selects the epoch and drops its first ``skip`` samples.
    """

    def __init__(self, n: int, seed: int, ctx: DistContext) -> None:
        self._order: DistributedSampler[int] = DistributedSampler(
            _Indices(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
        )
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)
        self._order.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self._order) - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for pos, index in enumerate(self._order):
            if pos >= self.skip:
                yield index, self.epoch


class SeededSamples(Dataset):
    """Training samples keyed by ``(index, epoch)``: loads the decoded pair and applies ``transform``
    with ``transform.rng = numpy Generator(seed, epoch, index)`` (see :class:`TrainTransform`)."""

    def __init__(self, dataset: Any, transform: Any, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        image, label = self.dataset.load(index)
        self.transform.rng = np.random.default_rng((self.seed, int(epoch), int(index)))
        return self.transform(image, label)


def make_loader(
    samples: SeededSamples, sampler: EpochSampler, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """Batches of ``(images (B, 3, h, w), labels (B, h, w))``; workers are forked and persistent."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "worker_init_fn": worker_init, "prefetch_factor": 2}
        if "fork" in torch.multiprocessing.get_all_start_methods():
            extra["multiprocessing_context"] = "fork"
    return DataLoader(
        samples,
        # BatchSampler batches whatever keys its sampler yields; its hints say int, ours are (index, epoch).
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=True),  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=pin_memory,
        **extra,
    )


class Shard:
    """Rank ``rank``'s share (every ``world``-th image) of a split, with the API evaluate() reads."""

    def __init__(self, dataset: SegmentationDataset, rank: int, world: int) -> None:
        self.dataset, self.index = dataset, list(range(rank, len(dataset), world))
        self.info, self.split, self.root, self.has_labels = (
            dataset.info,
            dataset.split,
            dataset.root,
            dataset.has_labels,
        )

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int) -> Any:
        return self.dataset.load(self.index[i])

    def name(self, i: int) -> str:
        return self.dataset.name(self.index[i])


def overlap(a: SegmentationDataset, b: SegmentationDataset) -> bool:
    """True when the two splits share image files (e.g. trainval and val)."""
    return bool({p.resolve() for p, _ in a.samples} & {p.resolve() for p, _ in b.samples})


def evaluate_sharded(
    model: torch.nn.Module, dataset: SegmentationDataset, ctx: DistContext, device: torch.device, **kw: Any
) -> dict[str, Any]:
    """:func:`~dabnet_lib.training.validation.evaluate` of this rank's :class:`Shard`, the confusion matrices summed
    over ranks (``ConfusionMatrix.all_reduce``) and the metrics recomputed from the sum; ``kw`` goes to
    evaluate (scale, mean, std). Without DDP (or with fewer images than ranks) it evaluates everything."""
    shard = ctx.enabled and len(dataset) >= ctx.world_size
    res = evaluate(
        model,
        # Shard has the part of SegmentationDataset that evaluate() reads (len, load, name, info, has_labels).
        Shard(dataset, ctx.rank, ctx.world_size) if shard else dataset,  # type: ignore[arg-type]
        device=device,
        batch_size=1,
        progress=False,
        **kw,
    )
    if shard:
        cm = ConfusionMatrix.from_counts(
            res["confusion"], dataset.info.ignore_index, device=device if ctx.backend == "nccl" else "cpu"
        )
        res.update(cm.all_reduce().compute())
    return res


class ThreadTuner:
    """``threads="auto"`` on a shared CPU: the intra-op thread count, re-chosen while training.

    With all cores in use, OpenMP threads wait for each other at every operator, so when another process
    holds a core, two threads can run ten times slower than one; on an idle machine two are faster.
    Every ``period`` iterations (the first time after ``2 * probe``) this runs ``probe + 1`` iterations on
    another candidate count (the first untimed) and keeps it when it beat the last ``probe`` iterations at
    the current count by 10%. At the largest count a trial is skipped while the process's CPU time shows its
    threads ran the whole time (share >= :data:`~dabnet_lib.machine.BUSY_CPU_SHARE`: nobody else holds a
    core), so a quiet machine never pays for one-thread iterations or a torch.compile recompile per thread
    count. (No speed difference was measurable on a quiet 2-core Xeon: 35-iteration windows varied 500-580
    ms per iteration between runs of either setting.)
    Thread counts change floating-point summation order: runs with "auto" are not bit-reproducible.
    """

    def __init__(self, candidates: Sequence[int], period: int = 100, probe: int = 4) -> None:
        self.candidates = sorted({int(c) for c in candidates})
        self.period, self.probe = period, probe
        self.current = self.candidates[-1]
        self.recent: list[float] = []
        self.recent_cpu: list[float] = []  # process CPU seconds of the iterations in ``recent``
        self.skipped_trials = 0
        self.trial: int | None = None
        self.trial_times: list[float] = []
        self.switches = 0
        self.reset()
        torch.set_num_threads(self.current)

    def _uncontended(self) -> bool:
        """The recent iterations' CPU time says every thread ran the whole time (no other process held a core)."""
        share = cpu_share(sum(self.recent_cpu), sum(self.recent), self.current)
        return len(self.recent_cpu) == len(self.recent) and share is not None and share >= BUSY_CPU_SHARE

    def reset(self) -> None:
        """Forget the timings (the work per iteration changed, e.g. a new resolution): probe again soon."""
        self.recent, self.trial, self.countdown = [], None, 2 * self.probe
        torch.set_num_threads(self.current)

    def record(self, seconds: float, cpu_seconds: float | None = None) -> None:
        """Feed the wall time of the iteration just finished and, where known, this process's CPU time in it."""
        if self.trial is None:
            self.recent = ([*self.recent, seconds])[-self.probe :]
            self.recent_cpu = ([*self.recent_cpu, cpu_seconds])[-self.probe :] if cpu_seconds is not None else []
            self.countdown -= 1
            if self.countdown <= 0 and self.current == self.candidates[-1] and self._uncontended():
                self.countdown, self.skipped_trials = self.period, self.skipped_trials + 1
                return
            if self.countdown <= 0 and len(self.candidates) > 1:
                others = [c for c in self.candidates if c != self.current]
                self.trial = others[self.switches % len(others)] if len(others) > 1 else others[0]
                self.trial_times = []
                torch.set_num_threads(self.trial)
            return
        self.trial_times.append(seconds)
        if len(self.trial_times) > self.probe:
            timed = self.trial_times[1:]
            if sum(timed) < 0.9 * sum(self.recent) * len(timed) / max(1, len(self.recent)):
                self.current, self.recent = self.trial, timed
                self.switches += 1
            torch.set_num_threads(self.current)
            self.trial, self.countdown = None, self.period


def worker_init(_worker_id: int) -> None:
    """DataLoader workers ignore SIGINT (the main process finishes the iteration and saves) and use
    one thread each (the main process's threads do the compute)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
