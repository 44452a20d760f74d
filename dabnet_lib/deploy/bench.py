"""``dabnet bench-train``: training images/s of an official-style loop and of this engine, same run.

(a) official style, as the official ``train.py`` does it: a Dataset that decodes both PNGs with
    ``cv2.imread`` inside ``__getitem__`` on every access, random scale/pad/crop/flip in numpy, NCHW
    tensors and model, ``num_workers=4`` (its default), and a learning-rate scheduler object built
    anew every iteration to set the warm-up/poly lr by hand.
(b) this engine: the split decoded once into RAM, :class:`TrainTransform` with per-sample seeds,
    :func:`step.train_step`, the profile's optimizer (torch's fused Adam) and a persistent
    :class:`WarmupPolyLR` (in-process augmentation by default), trained as one or more
    :class:`~dabnet_lib.training.autotune.Candidate` (fp32 or bf16, NCHW or channels_last, eager or
    compiled). ``dabnet bench-train`` times what the ``cpu`` profile's ``"auto"`` picks on this machine;
    ``--sweep`` times every candidate.

Both train the same DABNet (same init, Adam (for (a) torch's CPU default: one tensor at a time),
class-weighted CE with the same weights) on CamVid ``train`` crops of ``input_size`` at batch
``batch_size``, data loading included, alternating in
rounds (see :func:`bench_train`). Decoding the split once for (b) is timed separately.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import CAMVID, build_dataset, subset
from ..data.transforms import PAPER_SCALES, TrainTransform
from ..devices import to_memory_format
from ..errors import DatasetError
from ..machine import cpu_label
from ..model.dabnet import DABNet
from ..model.fast_ops import use_fast_ops
from ..training import distributed as D
from ..training.autotune import Candidate
from ..training.losses import build_loss
from ..training.recipes import get_recipe
from ..training.run_builder import build_optimizer
from ..training.schedule import WarmupPolyLR, lr_factor
from ..training.step import autocast_dtype, train_step, training_layout

# The official release's CamVid class weights (github.com/Reagan1311/DABNet): both loops use them, so the loss
# costs the same.
_WEIGHTS = (4.43, 3.44, 9.63, 2.91, 6.99, 5.21, 9.49, 9.15, 7.17, 9.89, 7.55)


def _imread(path: Path | None, flags: int) -> np.ndarray:
    """``cv2.imread(path, flags)`` (BGR or grey), or :class:`DatasetError` naming a file it cannot read."""
    image = None if path is None else cv2.imread(str(path), flags)
    if image is None:
        raise DatasetError(f"bench-train: cannot read {path}: missing or not an image (re-run `make data`)")
    return image


class OfficialStyleCamVid(Dataset):
    """Per-sample decode + augmentation written the way the official ``CamVidDataSet`` does it."""

    def __init__(
        self, samples: list[tuple[Path, Path | None]], crop: tuple[int, int], mean: tuple[float, ...], ignore: int
    ) -> None:
        self.samples, self.crop, self.ignore = samples, crop, ignore
        self.mean_bgr = np.array(mean[::-1], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.samples[i]
        image = _imread(image_path, cv2.IMREAD_COLOR)
        label = _imread(label_path, cv2.IMREAD_GRAYSCALE)
        scale = random.choice(PAPER_SCALES)
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        image = np.asarray(image, np.float32) - self.mean_bgr
        image = image[:, :, ::-1]  # BGR -> RGB
        ch, cw = self.crop
        pad_h, pad_w = max(ch - label.shape[0], 0), max(cw - label.shape[1], 0)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(np.ascontiguousarray(image), 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0.0)
            label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore)
        top = random.randint(0, label.shape[0] - ch)
        left = random.randint(0, label.shape[1] - cw)
        image = np.asarray(image[top : top + ch, left : left + cw], np.float32).transpose(2, 0, 1)
        label = np.asarray(label[top : top + ch, left : left + cw], np.float32)
        flip = np.random.choice(2) * 2 - 1
        return image[:, :, ::flip].copy(), label[:, ::flip].copy()


class _Loop:
    """One training loop under test: ``make_batches()`` opens a fresh batch iterator (an official-style
    loader starts its worker processes there), ``step(x, y)`` trains on one batch."""

    def __init__(
        self,
        make_batches: Callable[[], Iterator[Any]],
        step: Callable[[Any, Any], None],
        layout_note: str | None = None,
    ) -> None:
        self.make_batches, self.step = make_batches, step
        self.layout_note = layout_note  # set when the candidate's layout was refused (it trains NCHW instead)
        self.seconds: list[float] = []
        self.images = 0

    def run(self, untimed: int, timed: int) -> None:
        batches = self.make_batches()
        for _ in range(untimed):
            self.step(*next(batches))
        start = time.perf_counter()
        for _ in range(timed):
            x, y = next(batches)
            self.step(x, y)
            self.images += x.shape[0]
        if timed:
            self.seconds.append(time.perf_counter() - start)
        del batches  # workers, if any, exit here and take no CPU from the other loop's round

    def result(self) -> dict[str, Any]:
        total = sum(self.seconds)
        return {
            "images_per_s": self.images / total,
            "seconds": total,
            "images": self.images,
            "round_images_per_s": [self.images / len(self.seconds) / s for s in self.seconds],
        }


def _engine_loop(
    c: Candidate,
    ds: Any,
    input_size: tuple[int, int],
    batch_size: int,
    num_workers: int,
    seed: int,
    criterion: torch.nn.Module,
    total: int,
    fast_ops: bool = False,
) -> _Loop:
    """This engine's loop trained as candidate ``c`` (precision, layout, compile)."""
    cpu = torch.device("cpu")
    info = CAMVID
    amp_dtype = autocast_dtype(c.amp, cpu)
    plan = training_layout(c.channels_last, amp_dtype, cpu)
    torch.manual_seed(seed)
    profile = get_recipe("camvid", "cpu")
    net = to_memory_format(DABNet(info.num_classes), plan.memory_format).train()
    model = use_fast_ops(net, fast_ops, bn_prelu=profile.fused_bn_prelu)
    opt = build_optimizer(profile.replace(lr=1e-3), model.parameters())  # as the profile
    step_model = plan.compile(model) if c.compile else model
    sched = WarmupPolyLR(opt, total, 500, 1 / 3, 0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    transform = TrainTransform(input_size, PAPER_SCALES, mean=info.official_mean, ignore_index=info.ignore_index)
    sampler = D.EpochSampler(len(ds), seed, D.DistContext())
    loader = D.make_loader(D.SeededSamples(ds, transform, seed), sampler, batch_size, num_workers, False)

    def batches() -> Iterator[Any]:
        sampler.set_epoch(sampler.epoch + 1)
        return iter(loader)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(step_model, x.contiguous(memory_format=plan.memory_format), y, criterion, opt, scaler, amp_dtype)
        sched.advance()

    return _Loop(batches, step, plan.note)


def bench_train(
    data_root: str | os.PathLike[str],
    candidates: Sequence[Candidate],
    batch_size: int = 8,
    input_size: tuple[int, int] = (360, 480),
    iters: int = 4,
    rounds: int = 3,
    warmup: int = 1,
    num_workers: int = 0,
    official_workers: int = 4,
    seed: int = 0,
    max_images: int | None = None,
    threads: int | None = None,
    status: Mapping[Candidate, str] | None = None,
    fast_ops: bool = False,
) -> dict[str, Any]:
    """Images/s of (a) the official-style loop and (b) this engine trained as each of ``candidates``
    (see the module docstring); ``status`` notes per candidate (e.g. why the autotuner refuses it).

    The loops alternate in ``rounds`` rounds of ``iters`` timed iterations each (after one untimed
    iteration per round, and ``warmup`` untimed iterations before the first round, where compilation
    happens), so that the load of other processes on a shared machine falls on all alike. A round of
    (a) starts its workers afresh and may use batches they decoded during its untimed iteration, which
    hides part of (a)'s decoding cost: the ratios are conservative. ``max_images`` limits the training
    images (tests); ``threads`` sets torch's intra-op threads for all loops (default: all cores);
    ``fast_ops`` swaps :mod:`dabnet_lib.model.fast_ops` into every engine loop (as training does on CPU), with
    the cpu profile's fused BN+PReLU.
    Result: ``official`` and ``engines`` (one dict per candidate, with ``label`` and ``ratio``
    against the official loop); ``ratio`` is the first candidate's.
    """
    if batch_size < 1 or iters < 1 or rounds < 1 or warmup < 0 or not candidates:
        raise ValueError("batch_size, iters and rounds must be >= 1, warmup >= 0, and one candidate given")
    info, total = CAMVID, 1000 * 23
    ds = subset(build_dataset("camvid", data_root, "train"), max_images)
    criterion = build_loss("ce", info.ignore_index, weight=torch.tensor(_WEIGHTS))
    if threads is not None:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "batch_size": batch_size,
        "input_size": list(input_size),
        "iters": iters,
        "rounds": rounds,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_label(),
        "torch": torch.__version__,
        "load_before": os.getloadavg()[0],
        "fast_ops": fast_ops,
    }

    # (a) official style
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model_a = DABNet(info.num_classes).train()
    opt_a = torch.optim.Adam(model_a.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=2e-4)
    official_data = OfficialStyleCamVid(ds.samples, input_size, info.official_mean, info.ignore_index)
    count = {"it": 0}

    def official_batches() -> Iterator[Any]:
        with warnings.catch_warnings():  # 4 workers on a 2-core machine: the official default being measured
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            return iter(
                DataLoader(
                    official_data, batch_size=batch_size, shuffle=True, num_workers=official_workers, drop_last=True
                )
            )

    def official_step(x: torch.Tensor, y: torch.Tensor) -> None:
        it = count["it"]
        torch.optim.lr_scheduler.LambdaLR(opt_a, lambda _e: lr_factor(it, total, 500, 1 / 3, 0.9))  # rebuilt each step
        loss = criterion(model_a(x), y.long())
        opt_a.zero_grad()
        loss.backward()
        opt_a.step()
        loss.item()
        count["it"] += 1

    # (b) this engine, once per candidate
    t = time.perf_counter()
    ds.cache_in_memory(progress=False)
    out["decode_once_s"] = time.perf_counter() - t
    official = _Loop(official_batches, official_step)
    engines = {
        c: _engine_loop(c, ds, input_size, batch_size, num_workers, seed, criterion, total, fast_ops)
        for c in candidates
    }
    t = time.perf_counter()
    official.run(warmup, 0)
    out["official_warmup_s"] = time.perf_counter() - t
    warm: dict[Candidate, float] = {}
    for c, loop in engines.items():
        t = time.perf_counter()
        loop.run(warmup, 0)
        warm[c] = time.perf_counter() - t
    for _ in range(rounds):
        official.run(1, iters)
        for loop in engines.values():
            loop.run(1, iters)
    out["official"] = {**official.result(), "num_workers": official_workers, "layout": "NCHW"}
    out["engines"] = []
    for c, loop in engines.items():
        res = loop.result()
        trained_cl = c.channels_last and loop.layout_note is None
        label = c.label if trained_cl == c.channels_last else c.label.replace("channels_last", "NCHW*")
        out["engines"].append(
            {
                **res,
                "label": label,
                "amp": c.amp,
                "channels_last": trained_cl,
                "requested_channels_last": c.channels_last,
                "layout_note": loop.layout_note,
                "compile": c.compile,
                "num_workers": num_workers,
                "warmup_s": warm[c],
                "status": (status or {}).get(c, ""),
                "ratio": res["images_per_s"] / out["official"]["images_per_s"],
            }
        )
    out["ratio"] = out["engines"][0]["ratio"]
    out["load_after"] = os.getloadavg()[0]
    return out


def format_bench(result: dict[str, Any]) -> str:
    """The printed report of :func:`bench_train`."""
    h, w = result["input_size"]
    a = result["official"]

    def rates(loop: dict[str, Any]) -> str:
        return ", ".join(f"{r:.2f}" for r in loop["round_images_per_s"])

    lines = [
        f"bench-train on {result['cpu']} ({result['cpu_count']} CPUs, {result['threads']} threads), torch "
        f"{result['torch']}: CamVid train crops {h}x{w}, batch {result['batch_size']}; the loops alternate, "
        f"{result['rounds']} rounds of {result['iters']} timed iterations each; 1-min load average "
        f"{result['load_before']:.1f} before, {result['load_after']:.1f} after (other processes slow all loops)",
        f"(a) official-style loop (cv2 decode per sample, NCHW, fp32 eager, {a['num_workers']} workers, scheduler "
        f"rebuilt every step): {a['images_per_s']:.2f} images/s (rounds: {rates(a)})",
        f"(b) this engine (decoded once in {result['decode_once_s']:.1f} s, {result['engines'][0]['num_workers']} "
        f"workers, {'fast CPU ops' if result['fast_ops'] else 'stock ops'}), per way to train:",
    ]
    for e in result["engines"]:
        note = f"  [{e['status']}]" if e["status"] else ""
        lines.append(
            f"    {e['label']:<26} {e['images_per_s']:7.2f} images/s  {e['ratio']:5.2f}x the official loop"
            f"  (warm-up {e['warmup_s']:.0f} s; rounds: {rates(e)}){note}"
        )
    refused = next((e["layout_note"] for e in result["engines"] if e.get("layout_note")), None)
    if refused:
        lines.append(f"    * asked for channels_last, trained NCHW: {refused}")
    lines.append(f"ratio (b)/(a) of {result['engines'][0]['label']}: {result['ratio']:.2f}x")
    lines.append("evaluation: `dabnet test` prints the share of time spent in metric updates.")
    return "\n".join(lines)
