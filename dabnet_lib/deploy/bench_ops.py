"""``dabnet bench-ops``: one DABNet training step with the stock ops against the fast ops
(:mod:`dabnet_lib.model.fast_ops`), timed interleaved in the same run, and the ratio against the target.

A step is forward + class-weighted cross-entropy + backward + Adam on synthetic images and labels
(the kernels' cost does not depend on the pixel values). Both models start from the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..data.datasets import CAMVID
from ..data.statistics import CLASS_WEIGHT_C
from ..devices import to_memory_format
from ..errors import DabnetError
from ..machine import cpu_label
from ..model.dabnet import DABNet
from ..model.fast_ops import FUSED_BN_PRELU_MIN_ELEMENTS, count_fast_ops, use_fast_ops

#: The issue's training-step target: fast ops at least this many times faster than the stock ops.
TRAIN_STEP_TARGET = 1.3


def _step_fn(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, amp: str
) -> Callable[[], None]:
    """One training step of ``model`` (Adam, lr 1e-3, weight decay 2e-4: the CamVid recipe)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=2e-4)

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
        with ctx:
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=CAMVID.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_fast_ops(
    input_size: tuple[int, int] = (180, 240),
    batch: int = 8,
    threads: int = 2,
    amp: str = "off",
    channels_last: bool = False,
    rounds: int = 5,
    iters: int = 3,
    warmup: int = 2,
    num_classes: int = len(CAMVID.classes),
    bn_prelu: bool = True,
) -> dict[str, Any]:
    """Median step time (ms) of the stock and the fast-ops model, ``rounds`` interleaved rounds of
    ``iters`` steps each after ``warmup`` untimed steps per model; ``ratio`` = stock / fast (> 1: the
    fast ops are faster). amp: ``"off"`` (fp32) or ``"bf16"`` (CPU autocast). bn_prelu: the fast model also
    fuses its BN+PReLU pairs (:class:`~dabnet_lib.model.fast_ops.FastBNPReLU`, as the cpu profile trains)."""
    if amp not in ("off", "bf16"):
        raise DabnetError(f"amp must be 'off' or 'bf16', got {amp!r}")
    settings = {"batch": (batch, 1), "threads": (threads, 1), "rounds": (rounds, 1), "iters": (iters, 1)}
    settings.update(warmup=(warmup, 0), H=(input_size[0], 16), W=(input_size[1], 16))
    low = [f"{name} must be >= {least}, got {value}" for name, (value, least) in settings.items() if value < least]
    if low:
        raise DabnetError(f"bench-ops: {'; '.join(low)}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        stock = DABNet(num_classes).train()
        fast = use_fast_ops(copy.deepcopy(stock), bn_prelu=bn_prelu)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        images = torch.randn(batch, 3, *input_size, generator=gen).contiguous(memory_format=layout)
        labels = torch.randint(0, num_classes + 1, (batch, *input_size), generator=gen)
        weight = 1.0 / torch.log(CLASS_WEIGHT_C + torch.rand(num_classes, generator=gen) / num_classes)
        steps = {}
        for name, model in (("stock", stock), ("fast", fast)):
            steps[name] = _step_fn(to_memory_format(model, layout), images, labels, weight, amp)
            for _ in range(warmup):
                steps[name]()
        times: dict[str, list[float]] = {"stock": [], "fast": []}
        for r in range(rounds):
            order = ("stock", "fast") if r % 2 == 0 else ("fast", "stock")
            for name in order:
                for _ in range(iters):
                    start = time.perf_counter()
                    steps[name]()
                    times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    stock_ms, fast_ms = statistics.median(times["stock"]), statistics.median(times["fast"])
    return {
        "stock_ms": stock_ms,
        "fast_ms": fast_ms,
        "ratio": stock_ms / fast_ms,
        "times_ms": times,
        "cpu": cpu_label(),
        "threads": threads,
        "batch": batch,
        "input_size": tuple(input_size),
        "amp": amp,
        "channels_last": channels_last,
        "torch": torch.__version__,
        "fast_ops": count_fast_ops(fast),
        "target": TRAIN_STEP_TARGET,
    }


def format_bench_ops(result: dict[str, Any]) -> str:
    """Printable lines: setup, both medians, and the verdict line against the target."""
    h, w = result["input_size"]
    ratio, target = result["ratio"], result["target"]
    verdict = "met" if ratio >= target else f"NOT met, {100 * (1 - ratio / target):.0f}% short"
    precision = "bf16 autocast" if result["amp"] == "bf16" else "fp32"
    layout = "channels_last" if result["channels_last"] else "NCHW"
    ops = result["fast_ops"]
    return "\n".join(
        [
            f"training step (forward + class-weighted CE + backward + Adam), DABNet {h}x{w}, batch {result['batch']}, "
            f"{result['threads']} threads, {precision}, {layout}, torch {result['torch']}",
            f"cpu: {result['cpu']}",
            f"fast ops: {ops['fast']} depth-wise convs swapped, {ops['custom_backward']} of them dilated "
            f"(written-out backward), {ops['prelu']} PReLUs swapped, {ops['bn_prelu']} BN+PReLU pairs fused "
            f"(on activations >= {FUSED_BN_PRELU_MIN_ELEMENTS:,} elements)",
            f"stock ops: {result['stock_ms']:.1f} ms/step (median); fast ops: {result['fast_ms']:.1f} ms/step",
            f"fast ops: {ratio:.2f}x the stock ops (target >= {target:.1f}x: {verdict})",
        ]
    )
