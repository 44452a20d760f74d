"""Parameters, FLOPs and an honest latency harness for DABNet and its optimised variants.

- :func:`count_params`, :func:`flops` (``torch.utils.flop_counter``; GFLOPs and GMACs, 1 MAC = 2 FLOPs).
- :func:`measure`: median / p90 latency (ms) and FPS of one callable, with the context that makes a
  number meaningful (device, threads, batch, resolution, torch version, load average).
- :func:`benchmark`: builds the requested variants (:mod:`dabnet_lib.deploy.inference_variants`), checks
  each against eager and times them interleaved in rounds, so that a change in machine load hits
  every variant alike; speed-ups are against eager measured in the same run.
- :func:`export_onnx`: an ONNX file checked in onnxruntime before it is (atomically) written.
- :func:`export_openvino`: OpenVINO IR (.xml + .bin) checked in OpenVINO before it is (atomically) written.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic_files import write_bytes_atomic
from ..errors import DabnetError
from ..machine import device_label
from ..model.dabnet import count_parameters
from .inference_variants import (
    FP32_TOLERANCE,
    INT8_VARIANTS,
    ONNX_OPSET,
    REGISTRY,
    VARIANTS,
    VariantError,
    onnx_bytes,
    openvino_fn,
    openvino_model,
    optimize,
    ort_fn,
    ort_session,
    relative_difference,
)

#: Which unit the paper's tables use for FLOPs: neither the paper (Li & Kim, BMVC 2019) nor the official
#: release's README gives a FLOP figure for DABNet, so we cannot tell.
PAPER_FLOP_UNIT = "not stated in our sources"

#: What notebook 06 times per profile: variants, input sizes (H, W), batch sizes, timed calls per
#: variant (``iters``, spread over interleaved rounds), untimed warm-up calls, int8 calibration images,
#: and the variants whose val mIoU is compared with eager (:mod:`dabnet_lib.deploy.variant_accuracy`) on the
#: first ``accuracy_limit`` val images (None: all).
FPS_GRID: dict[str, dict[str, Any]] = {
    "smoke": {
        "variants": ["eager", "channels_last", "folded", "onnxruntime"],
        "sizes": [(64, 96)],
        "batches": [1],
        "iters": 3,
        "warmup": 1,
        "calibration": 2,
        "accuracy_variants": ["folded"],
        "accuracy_limit": 2,
    },
    "cpu": {
        "variants": "all",
        "sizes": [(360, 480), (512, 1024)],
        "batches": [1, 4],
        "iters": 6,
        "warmup": 1,
        "calibration": 8,
        "accuracy_variants": ["folded", "int8"],
        "accuracy_limit": None,
    },
    "paper": {
        "variants": "all",
        "sizes": [(360, 480), (512, 1024), (1024, 2048)],
        "batches": [1, 4],
        "iters": 30,
        "warmup": 5,
        "calibration": 32,
        "accuracy_variants": ["folded", "int8"],
        "accuracy_limit": None,
    },
}


def count_params(model: nn.Module) -> int:
    """Trainable parameters (756,643 for the paper's 19-class DABNet)."""
    return count_parameters(model)


def flops(model: nn.Module, input_size: tuple[int, int], batch: int = 1, channels: int = 3) -> dict[str, Any]:
    """FLOPs of one forward pass on a (batch, channels, H, W) input, counted by ``FlopCounterMode``.

    Returns ``flops`` (int, whole batch), ``gflops`` and ``gmacs`` per image (1 MAC = 2 FLOPs),
    ``by_operator`` {aten op: FLOPs per image} and ``paper_unit``. Only convolutions, matmuls and the
    like are counted; BatchNorm, PReLU, pooling and interpolation are not (FlopCounterMode's rule).
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = input_size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    images = torch.zeros(batch, channels, h, w, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(images)
    total = int(counter.get_total_flops())
    ops = counter.get_flop_counts().get("Global", {})
    return {
        "input_size": (h, w),
        "batch": batch,
        "flops": total,
        "gflops": total / batch / 1e9,
        "gmacs": total / batch / 2e9,
        "by_operator": {str(op): int(n) // batch for op, n in ops.items()},
        "paper_unit": PAPER_FLOP_UNIT,
    }


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, idle) jiffies summed over all CPUs from /proc/stat, or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, idle


def wait_for_idle(max_wait_s: float, threshold: float = 0.9, window_s: float = 1.0, windows: int = 2) -> float | None:
    """Wait (up to ``max_wait_s``) until the CPUs were at least ``threshold`` idle (0..1) for ``windows``
    consecutive ``window_s`` windows, i.e. no other process is busy. Returns the last idle fraction
    seen (None where /proc/stat is missing). For timing on a shared machine."""
    deadline = time.monotonic() + max_wait_s
    calm = 0
    frac = None
    while True:
        before = _cpu_times()
        if before is None:
            return None
        time.sleep(window_s)
        after = _cpu_times()
        if after is None:
            return None
        busy, idle = after[0] - before[0], after[1] - before[1]
        frac = idle / (busy + idle) if busy + idle else 1.0
        calm = calm + 1 if frac >= threshold else 0
        if calm >= windows or time.monotonic() >= deadline:
            return round(frac, 3)


def measure(fn: Callable[[torch.Tensor], Any], input: torch.Tensor, warmup: int = 5, iters: int = 20) -> dict[str, Any]:
    """Time ``fn(input)``: ``warmup`` untimed calls, then ``iters`` timed ones (under ``no_grad``).

    CUDA is synchronised around every timed call. Returns ``median_ms``, ``p90_ms``, ``mean_ms``,
    ``min_ms``, ``fps`` (= batch * 1000 / median_ms), ``times_ms`` (every call), ``device``,
    ``threads``, ``batch``, ``resolution`` "HxW", ``torch`` and ``load_avg`` (1 min, at the end).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    cuda = input.is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            fn(input)
        sync()
        for _ in range(iters):
            start = time.perf_counter()
            fn(input)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    return summarize(times, input, device_label(input.device))


def summarize(times_ms: Sequence[float], input: torch.Tensor, device: str) -> dict[str, Any]:
    """The statistics :func:`measure` reports, for a list of per-call times in ms."""
    arr = np.asarray(times_ms, dtype=np.float64)
    median = float(np.median(arr))
    batch = int(input.shape[0])
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(arr, 90)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "fps": batch * 1000.0 / median,
        "times_ms": [float(t) for t in arr],
        "device": device,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "resolution": f"{input.shape[-2]}x{input.shape[-1]}",
        "torch": torch.__version__,
        "load_avg": load_average(),
    }


# --------------------------------------------------------------------------- benchmark rows (CPU and device)


#: The fields of a benchmark row that its build and timing fill in, before they do.
_NOT_YET_BUILT: dict[str, Any] = {
    "ms": None,
    "p90_ms": None,
    "fps": None,
    "speedup": None,
    "parity": "",
    "parity_ok": None,
    "parity_value": None,
    "build_s": None,
    "notes": "",
    "error": None,
}


def variant_rows(
    names: Sequence[str], device: str, batch: int, input_size: tuple[int, int]
) -> dict[str, dict[str, Any]]:
    """One benchmark row per variant in ``names``, before it is built and timed: ``status`` "ok", no
    times, speed-up or parity yet, and the run's context (``device`` label, threads, batch, resolution
    "HxW", torch version, 1-minute load average at the start)."""
    context = {
        "device": device,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "resolution": f"{input_size[0]}x{input_size[1]}",
        "torch": torch.__version__,
        "load_avg_start": load_average(),
    }
    return {name: {"variant": name, "status": "ok", **_NOT_YET_BUILT, **context} for name in names}


def record_build(row: dict[str, Any], parity: Mapping[str, Any], build_s: float, notes: str) -> None:
    """Fill ``row`` for a built variant: its check against eager (text, ok, value), build seconds, notes."""
    row.update(
        parity=parity.get("text", ""),
        parity_ok=parity.get("ok"),
        parity_value=parity.get("value"),
        build_s=round(build_s, 2),
        notes=notes,
    )


def record_times(
    rows: Mapping[str, dict[str, Any]],
    times: Mapping[str, Sequence[float]],
    example: torch.Tensor,
    digits: int,
    idle_seen: list[float | None],
) -> None:
    """Fill the timed variants' median and p90 ms (``digits`` decimals) and FPS, every row's speed-up
    against eager (when both were timed), the load average at the end and ``idle_before_rounds``."""
    eager_ms = None
    for name, calls in times.items():
        stats = summarize(calls, example, rows[name]["device"])
        rows[name].update(
            ms=round(stats["median_ms"], digits), p90_ms=round(stats["p90_ms"], digits), fps=round(stats["fps"], 2)
        )
        eager_ms = stats["median_ms"] if name == "eager" else eager_ms
    end_load = load_average()
    for row in rows.values():
        row["load_avg_end"] = end_load
        row["idle_before_rounds"] = idle_seen
        if row["ms"] is not None and eager_ms:
            row["speedup"] = round(eager_ms / row["ms"], 2)


# --------------------------------------------------------------------------- calibration images


def calibration_images(
    root: str | os.PathLike[str],
    input_size: tuple[int, int],
    count: int = 8,
    split: str = "train",
    mean: Sequence[float] | None = None,
    dataset: str = "camvid",
) -> list[torch.Tensor]:
    """``count`` real images of ``split`` (evenly spread), normalised as the engine does (minus the RGB
    ``mean``, default the dataset's official mean, no std) and resized to ``input_size``: a list of
    (1, 3, H, W) float32 tensors. Raises :class:`DatasetError` when the data is missing."""
    from ..data.datasets import build_dataset, get_info
    from ..data.transforms import normalize

    ds = build_dataset(dataset, root, split)
    mean = tuple(mean) if mean is not None else get_info(dataset).official_mean
    n = min(count, len(ds))
    out = []
    for i in np.linspace(0, len(ds) - 1, n).round().astype(int):
        image, _ = ds.load(int(i))
        x = normalize(image, mean).unsqueeze(0)
        if tuple(x.shape[-2:]) != tuple(input_size):
            x = torch.nn.functional.interpolate(x, size=tuple(input_size), mode="bilinear", align_corners=False)
        out.append(x.contiguous())
    return out


# --------------------------------------------------------------------------- benchmark


def parse_variants(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` or ``"a,b"`` (or a list) -> variant names, order kept, duplicates dropped.
    Unknown names are kept: :func:`benchmark` reports them as error rows."""
    names = [v.strip() for v in (spec.split(",") if isinstance(spec, str) else spec) if v.strip()]
    if names == ["all"] or not names:
        return list(VARIANTS)
    out: list[str] = []
    for name in names:
        for v in VARIANTS if name == "all" else [name]:
            if v not in out:
                out.append(v)
    return out


def benchmark(
    model: nn.Module,
    input_size: tuple[int, int],
    variants: str | Sequence[str] = "all",
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 5,
    iters: int = 30,
    rounds: int = 3,
    calibration: Sequence[torch.Tensor] | None = None,
    check_inputs: Sequence[torch.Tensor] | None = None,
    calibration_error: str | None = None,
    idle_wait_s: float = 0.0,
    log: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Build, check and time ``variants`` of ``model`` at ``batch`` x 3 x ``input_size`` on the CPU, or on
    ``device`` "cuda" through :func:`dabnet_lib.deploy.gpu_timing.benchmark_on_device` (its own variant list;
    CPU-only variants get a "cpu only" row).

    Eager is always built (the speed-up reference) and listed first. Times are taken in ``rounds``
    interleaved rounds of ``ceil(iters / rounds)`` calls per variant. A variant that is unknown or
    cannot be built gives a row with ``status`` "error" and its ``error`` message; the others run.
    With ``idle_wait_s`` > 0 each round first waits (up to that long) for the CPUs to be otherwise
    idle, for use on a shared machine; ``idle_before_rounds`` records the idle fraction seen.
    Row keys: variant, status, ms (median), p90_ms, fps, speedup (vs eager), parity (text),
    parity_ok, parity_value, build_s, notes, error, device, threads, batch, resolution, torch,
    load_avg_start, load_avg_end, idle_before_rounds.
    """
    if torch.device(device).type != "cpu":
        from .gpu_timing import benchmark_on_device

        return benchmark_on_device(
            model, input_size, variants, batch=batch, device=device, warmup=warmup, iters=iters, rounds=rounds, log=log
        )
    log = log or (lambda _msg: None)
    names = parse_variants(variants)
    if "eager" not in names:
        names.insert(0, "eager")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        example = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(0))
        built: dict[str, Any] = {}
        rows = variant_rows(names, device_label("cpu"), batch, input_size)
        for name, row in rows.items():
            log(f"building {name} ...")
            try:
                if name in INT8_VARIANTS and not calibration:
                    raise VariantError(calibration_error or "no calibration images given")
                opt = optimize(
                    model,
                    name,
                    example_input=example,
                    calibration=calibration,
                    threads=torch.get_num_threads(),
                    check_inputs=check_inputs,
                )
            except VariantError as exc:
                row.update(status="error", error=str(exc))
                continue
            built[name] = opt
            record_build(row, opt.parity, opt.build_s, opt.notes)
        times: dict[str, list[float]] = {name: [] for name in built}
        per_round = max(1, math.ceil(iters / max(1, rounds)))
        for name, opt in built.items():
            log(f"warming up {name} ...")
            measure(opt, example, warmup=max(0, warmup - 1), iters=1)
        idle_seen: list[float | None] = []
        for r in range(max(1, rounds)):
            if idle_wait_s > 0:
                idle_seen.append(wait_for_idle(idle_wait_s))
            for name, opt in built.items():
                times[name] += measure(opt, example, warmup=1, iters=per_round)["times_ms"]
            log(f"round {r + 1}/{rounds} done (load {load_average()})")
        record_times(rows, times, example, 2, idle_seen)
        return list(rows.values())
    finally:
        torch.set_num_threads(previous_threads)


def describe(
    model: nn.Module, input_size: tuple[int, int], rows: Sequence[dict[str, Any]], weights: str = ""
) -> dict[str, Any]:
    """Context for a benchmark table: ``params``, ``gflops``, ``gmacs`` and printable ``lines``
    (model size and cost, device, threads, batch, torch, load average before -> after, weights)."""
    cost = flops(model, input_size)
    params = count_params(model)
    first = rows[0] if rows else {}
    h, w = input_size
    lines = [
        f"DABNet {getattr(model, 'num_classes', '?')} classes: {params:,} parameters, {cost['gflops']:.2f} GFLOPs "
        f"= {cost['gmacs']:.2f} GMACs per {h}x{w} image (1 MAC = 2 FLOPs; paper's unit: {PAPER_FLOP_UNIT})",
        f"device: {first.get('device', device_label())}; threads {first.get('threads')}; batch {first.get('batch')}; "
        f"torch {torch.__version__}; load average {first.get('load_avg_start')} -> {first.get('load_avg_end')}",
    ]
    if weights:
        lines.append(f"weights: {weights}")
    return {"params": params, "gflops": cost["gflops"], "gmacs": cost["gmacs"], "lines": lines}


#: The speed targets on a CPU (ratio to eager, same run): the best fp32 variant, and int8.
FP32_SPEEDUP_TARGET = 2.0
INT8_SPEEDUP_TARGET = 3.0
#: The fp32 CPU variants the first target counts: all but eager (the reference) and OpenVINO's (compared below).
FP32_VARIANTS = tuple(
    n for n in VARIANTS if REGISTRY[n].precision == "fp32" and n != "eager" and REGISTRY[n].runtime != "OpenVINO"
)
#: Our own fp32 variants (PyTorch), compared with the OpenVINO runtime's, and that target (issue 12):
#: our best fp32 >= 1.3x OpenVINO fp32, our int8 at least as fast as OpenVINO int8, same run.
OUR_FP32_VARIANTS = tuple(n for n in VARIANTS if REGISTRY[n].precision == "fp32" and REGISTRY[n].runtime == "PyTorch")
VS_OPENVINO_FP32_TARGET = 1.3
VS_OPENVINO_INT8_TARGET = 1.0


def _ratio_line(label: str, ours: dict[str, Any] | None, theirs: dict[str, Any] | None, target: float) -> str:
    """``target <label> >= <target>x: <ours> A ms vs <theirs> B ms = R.RRx, met / NOT met, N% short``."""
    head = f"target {label} >= {target:.1f}x"
    if ours is None or theirs is None:
        return f"{head}: not measured (variant not run or failed)"
    got = theirs["ms"] / ours["ms"]
    verdict = "met" if got >= target else f"NOT met, {100 * (1 - got / target):.1f}% short"
    measured = f"{ours['variant']} {ours['ms']:.1f} ms vs {theirs['variant']} {theirs['ms']:.1f} ms"
    return f"{head}: {measured} = {got:.2f}x, {verdict}"


def fp32_flops_per_cycle(flags: set[str]) -> int:
    """Peak fp32 FLOP per cycle of one core from its ISA flags, assuming two FMA units per core (Intel
    Xeon Gold/Platinum since Skylake-SP, AMD Zen 2-4): AVX-512 2 x 16 lanes x 2 (FMA) = 64;
    AVX2+FMA 2 x 8 x 2 = 32; AVX 2 x 8 (separate add and mul) = 16; else SSE 8."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    return 16 if "avx" in flags else 8


def cpu_fp32_peak(threads: int) -> dict[str, Any] | None:
    """Peak fp32 GFLOP/s of ``threads`` cores: threads x max clock (GHz, /sys cpufreq or /proc/cpuinfo's
    current MHz) x :func:`fp32_flops_per_cycle`; a thread is counted as a core (on a VM the vCPUs may
    be hyper-threads of fewer cores: then the true peak is lower). None off Linux."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    ghz, source = None, "cpu MHz in /proc/cpuinfo"
    try:
        ghz, source = (
            int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6,
            "cpufreq max",
        )
    except (OSError, ValueError):
        mhz = [float(ln.split(":", 1)[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")]
        ghz = max(mhz) / 1e3 if mhz else None
    if not ghz:
        return None
    per_cycle = fp32_flops_per_cycle(flags)
    return {
        "gflops": threads * ghz * per_cycle,
        "threads": threads,
        "ghz": ghz,
        "flops_per_cycle": per_cycle,
        "clock_source": source,
    }


def peak_fraction_line(rows: Sequence[dict[str, Any]], gflops_per_image: float) -> str:
    """The best fp32 variant's achieved GFLOP/s (``gflops_per_image`` x images/s) as a fraction of
    :func:`cpu_fp32_peak` for the run's threads, with the peak's assumptions spelled out."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("ms") and r["variant"] not in INT8_VARIANTS]
    if not ok:
        return "fp32 peak fraction: not measured (no fp32 variant ran)"
    best = min(ok, key=lambda r: r["ms"])
    peak = cpu_fp32_peak(int(best["threads"]))
    achieved = gflops_per_image * best["batch"] * 1000.0 / best["ms"]
    if peak is None:
        return f"fp32 peak fraction: {best['variant']} reaches {achieved:.1f} GFLOP/s; CPU peak unknown here"
    return (
        f"fp32 peak fraction: {best['variant']} reaches {achieved:.1f} GFLOP/s "
        f"= {100 * achieved / peak['gflops']:.1f}% "
        f"of {peak['gflops']:.0f} GFLOP/s peak ({peak['threads']} threads counted as cores x {peak['ghz']:.2f} GHz "
        f"({peak['clock_source']}) x {peak['flops_per_cycle']} fp32 FLOP/cycle, assuming 2 FMA units)"
    )


def target_verdicts(rows: Sequence[dict[str, Any]], gflops_per_image: float | None = None) -> list[str]:
    """One line per speed target from the same-run times in ``rows``: best fp32 variant >= 2.0x eager,
    int8 >= 3.0x eager, our best fp32 (PyTorch) >= 1.3x OpenVINO fp32, our int8 >= 1.0x OpenVINO
    int8; met, or by how much it is short; a target whose variants did not run says so. With
    ``gflops_per_image`` also the best fp32 variant's fraction of the CPU's fp32 peak."""
    ok = {r["variant"]: r for r in rows if r.get("status") == "ok" and r.get("speedup") is not None}
    lines = []
    fp32 = [ok[v] for v in FP32_VARIANTS if v in ok]
    checks = [
        ("best fp32 variant", max(fp32, key=lambda r: r["speedup"]) if fp32 else None, FP32_SPEEDUP_TARGET),
        ("int8", ok.get("int8"), INT8_SPEEDUP_TARGET),
    ]
    for label, row, target in checks:
        if row is None:
            lines.append(f"target {label} >= {target:.1f}x eager: not measured (variant not run)")
            continue
        got = row["speedup"]
        verdict = "met" if got >= target else f"NOT met, {100 * (1 - got / target):.1f}% short"
        lines.append(f"target {label} >= {target:.1f}x eager: {row['variant']} {got:.2f}x, {verdict}")
    timed = {name: row for name, row in ok.items() if row.get("ms")}
    ours = [timed[v] for v in OUR_FP32_VARIANTS if v in timed]
    best_ours = min(ours, key=lambda r: r["ms"]) if ours else None
    lines.append(
        _ratio_line("our best fp32 vs OpenVINO fp32", best_ours, timed.get("openvino"), VS_OPENVINO_FP32_TARGET)
    )
    lines.append(
        _ratio_line("our int8 vs OpenVINO int8", timed.get("int8"), timed.get("openvino_int8"), VS_OPENVINO_INT8_TARGET)
    )
    if gflops_per_image is not None:
        lines.append(peak_fraction_line(rows, gflops_per_image))
    return lines


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The benchmark rows as a plain-text table (variant, ms, p90, FPS, speed-up, parity, build s)."""
    from tabulate import tabulate

    table = []
    for r in rows:
        if r["status"] != "ok":
            reason = r["error"] if r["status"] == "cpu only" else f"error: {r['error']}"
            table.append([r["variant"], "-", "-", "-", "-", reason, "-"])
            continue
        table.append(
            [
                r["variant"],
                f"{r['ms']:.1f}",
                f"{r['p90_ms']:.1f}",
                f"{r['fps']:.1f}",
                f"{r['speedup']:.2f}x",
                r["parity"],
                f"{r['build_s']:.1f}",
            ]
        )
    return tabulate(
        table,
        headers=["variant", "ms (median)", "p90 ms", "FPS", "vs eager", "check", "build s"],
        disable_numparse=True,
    )


# --------------------------------------------------------------------------- ONNX export


def _export_folder(out: Path) -> None:
    if not out.parent.is_dir():
        raise DabnetError(f"export: folder {out.parent} does not exist: create it or choose another --out")


def export_onnx(
    model: nn.Module,
    out: str | os.PathLike[str],
    input_size: tuple[int, int] = (360, 480),
    threads: int | None = None,
) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``out`` (dynamic batch/height/width) after checking it in onnxruntime.

    The check runs the bytes in an ORT session on a random (1, 3, H, W) input and requires the logits
    to match eager within ``FP32_TOLERANCE`` (relative); only then is the file written (temp file in
    the same folder, then ``os.replace``). Returns path, bytes, max_rel_diff, opset, input_size.
    """
    out = Path(out)
    _export_folder(out)
    model = model.eval()
    example = torch.randn(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    data = onnx_bytes(model, example, dynamic=True)
    run = ort_fn(ort_session(data, threads or torch.get_num_threads()))
    with torch.inference_mode():
        rel = relative_difference(model(example), run(example))
    if not rel <= FP32_TOLERANCE:
        raise VariantError(
            f"export: onnxruntime logits differ from PyTorch by {rel:.2e} (relative) > "
            f"{FP32_TOLERANCE}: file not written"
        )
    write_bytes_atomic(out, data)
    return {
        "path": str(out),
        "bytes": len(data),
        "max_rel_diff": rel,
        "opset": ONNX_OPSET,
        "input_size": tuple(input_size),
    }


# --------------------------------------------------------------------------- OpenVINO export


def export_openvino(
    model: nn.Module,
    out: str | os.PathLike[str],
    input_size: tuple[int, int] = (360, 480),
    threads: int | None = None,
) -> dict[str, Any]:
    """Write ``model`` as OpenVINO IR: ``out`` (``.xml``, the graph; dynamic batch/height/width) and
    the weights beside it (same stem, ``.bin``, float32: no fp16 compression).

    The IR is saved to a temporary folder beside ``out``, read back, compiled for the CPU (f32) and
    its logits on a random (1, 3, H, W) input must match PyTorch within ``FP32_TOLERANCE``
    (relative); only then are the files moved in place, ``.bin`` first, so an ``.xml`` present always
    has its weights. Returns path, bin_path, bytes (both files), max_rel_diff, input_size.
    """
    out = Path(out)
    if out.suffix != ".xml":
        raise DabnetError(f"export: --out {out} must end in .xml for OpenVINO IR (the weights go beside it as .bin)")
    _export_folder(out)
    import openvino as ov  # openvino_model below raised a clear VariantError if it is missing

    model = model.eval()
    example = torch.randn(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    ir = openvino_model(model, example, dynamic=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", dir=out.parent) as tmp:
        xml = Path(tmp) / out.name
        ov.save_model(ir, str(xml), compress_to_fp16=False)
        run = openvino_fn(str(xml), threads or torch.get_num_threads())
        with torch.inference_mode():
            rel = relative_difference(model(example), run(example))
        if not rel <= FP32_TOLERANCE:
            raise VariantError(
                f"export: OpenVINO logits differ from PyTorch by {rel:.2e} (relative) > "
                f"{FP32_TOLERANCE}: files not written"
            )
        data = {suffix: xml.with_suffix(suffix).read_bytes() for suffix in (".bin", ".xml")}
    for suffix, blob in data.items():  # .bin first: an .xml on disk always has its weights
        write_bytes_atomic(out.with_suffix(suffix), blob)
    return {
        "path": str(out),
        "bin_path": str(out.with_suffix(".bin")),
        "bytes": sum(map(len, data.values())),
        "max_rel_diff": rel,
        "input_size": tuple(input_size),
    }
