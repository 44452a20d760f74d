"""Inference speed on an accelerator: ``dabnet fps --device cuda`` and notebook 06 with ``device="cuda"``.

:func:`benchmark_on_device` builds the variants that run on the device (those of
:data:`~dabnet_lib.deploy.inference_variants.REGISTRY` with a device builder, :mod:`.device_builders`), checks each
against eager on the same device and times them interleaved in rounds, with the rows of
:func:`dabnet_lib.deploy.profiling.benchmark`:

- ``eager`` (fp32), ``channels_last``, ``folded`` (BatchNorm folded into the convolutions), ``compiled``
  (folded + channels_last + :class:`InferenceForward` under ``torch.compile``, Inductor's defaults for the
  device) must match eager within ``FP32_TOLERANCE``. They run in true fp32: TF32 is switched off while
  timing (the paper's GTX 1080Ti has none; TF32 would make "fp32" a reduced precision on Ampere+).
- ``fp16`` and ``bf16``: eager under ``torch.autocast``; parity is the relative logit difference within
  :data:`HALF_TOLERANCE` and the predicted-label agreement. bf16 on a GPU without native bf16 (compute
  capability < 8.0) is emulated and says so in its notes.
- variants that exist only on CPU (onnxruntime's CPU provider, the PT2E int8 and inductor freezing/C++
  wrapper builds, OpenVINO) get a row with ``status`` "cpu only" instead of timing the CPU.

On CUDA each call is timed with CUDA events and synchronised (latency of one call, launch overhead
included); ``cudnn.benchmark`` is on while timing. Any other device type (the CPU, for the tests) is timed
with ``perf_counter``. Unverified until a GPU run: every CUDA-specific line of this module.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import first_line
from ..machine import device_label
from .device_builders import Fn, no_grad_fn
from .inference_variants import FP32_TOLERANCE, REGISTRY, label_agreement, relative_difference

#: Variants timed on the device, in table order.
DEVICE_VARIANTS: tuple[str, ...] = tuple(name for name, v in REGISTRY.items() if v.device is not None)
#: Max relative logit difference to eager (fp32) for the autocast precisions (measured on CPU with a random-init
#: DABNet at 128x160: fp16 2e-3, bf16 1e-2; the GPU figures await a GPU run).
HALF_TOLERANCE: dict[str, float] = {"fp16": 1e-2, "bf16": 5e-2}


def device_variant_names(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` or a comma list -> names in order: device variants, then the CPU-only ones asked for."""
    names = [v.strip() for v in (spec.split(",") if isinstance(spec, str) else spec) if v.strip()]
    if not names or "all" in names:
        names = list(REGISTRY)  # the device variants come first there
    if "eager" not in names:
        names.insert(0, "eager")
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def _timing_backends(device: torch.device) -> Iterator[None]:
    """While timing on CUDA: true fp32 (TF32 off) and cuDNN's autotuner on; restored afterwards."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


def _build(model: nn.Module, name: str, device: torch.device) -> tuple[Fn, str]:
    """(callable on ``device``, notes) of device variant ``name``; ``model`` is already on ``device``."""
    build = REGISTRY[name].device
    assert build is not None  # benchmark_on_device builds only DEVICE_VARIANTS
    return build(model, device)


def _parity(name: str, ref: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    """fp32 variants: relative logit difference <= FP32_TOLERANCE; fp16/bf16: <= HALF_TOLERANCE, with the
    predicted-label agreement in the text."""
    if out.shape != ref.shape:
        return {"value": None, "ok": False, "text": f"FAIL shape {tuple(out.shape)} vs eager {tuple(ref.shape)}"}
    rel = relative_difference(ref, out)
    precision = REGISTRY[name].precision
    limit = HALF_TOLERANCE.get(precision, FP32_TOLERANCE)
    ok = rel <= limit
    text = f"{'ok' if ok else 'FAIL'} rel {rel:.1e}"
    if precision in HALF_TOLERANCE:
        text += f", labels {label_agreement(ref, out):.1f}% agree"
    return {"value": rel, "ok": ok, "text": text}


def time_calls(fn: Fn, images: torch.Tensor, calls: int) -> list[float]:
    """Milliseconds of each of ``calls`` calls ``fn(images)``: CUDA events around each call, then a
    synchronisation (CUDA); ``perf_counter`` elsewhere."""
    times: list[float] = []
    for _ in range(calls):
        if images.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(images)
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn(images)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _cpu_only_row(name: str) -> dict[str, str]:
    if name in REGISTRY:
        return {"status": "cpu only", "error": "CPU only (a CPU backend): not timed on this device"}
    return {"status": "error", "error": f"unknown variant {name!r}; choose from {', '.join(REGISTRY)}"}


def benchmark_on_device(
    model: nn.Module,
    input_size: tuple[int, int],
    variants: str | Sequence[str] = "all",
    batch: int = 1,
    device: str | torch.device = "cuda",
    warmup: int = 5,
    iters: int = 30,
    rounds: int = 3,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Build, check and time ``variants`` of ``model`` at ``batch`` x 3 x ``input_size`` on ``device``
    (the model itself is not moved: a copy is). Rows as :func:`dabnet_lib.deploy.profiling.benchmark`'s, eager
    first; a variant that cannot run here has ``status`` "cpu only" or "error" and its reason in ``error``."""
    from .profiling import record_build, record_times, variant_rows

    log = log or (lambda _msg: None)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    on_device = copy.deepcopy(model).eval().to(dev)
    example = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(0)).to(dev)
    rows = variant_rows(device_variant_names(variants), device_label(dev), batch, input_size)
    built: dict[str, Fn] = {}
    with _timing_backends(dev):
        reference = no_grad_fn(on_device)(example)
        for name, row in rows.items():
            if name not in DEVICE_VARIANTS:
                row.update(_cpu_only_row(name))
                continue
            log(f"building {name} on {dev} ...")
            start = time.perf_counter()
            try:
                fn, notes = _build(on_device, name, dev)
                out = fn(example)  # first call: compiles where it applies
            except Exception as exc:  # noqa: BLE001  (a compiler/backend failure: this variant's row)
                first = first_line(exc)
                row.update(status="error", error=f"{name} could not be built or run on {dev}: {first}")
                continue
            record_build(row, _parity(name, reference, out), time.perf_counter() - start, notes)
            built[name] = fn
        times: dict[str, list[float]] = {name: [] for name in built}
        for fn in built.values():
            time_calls(fn, example, max(1, warmup))
        per_round = max(1, math.ceil(iters / max(1, rounds)))
        for r in range(max(1, rounds)):
            for name, fn in built.items():
                times[name] += time_calls(fn, example, per_round)
            log(f"round {r + 1}/{rounds} done")
    record_times(rows, times, example, 3, [])
    return list(rows.values())
