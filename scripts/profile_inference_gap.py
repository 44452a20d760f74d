"""Where the time of one 360x480 frame goes: our compiled fp32 variant (torch.profiler over inductor's kernels
and oneDNN's convolutions) beside OpenVINO fp32 (its per-layer performance counters), grouped the same way:
convolutions (oneDNN calls; OpenVINO's Convolution/GroupConvolution nodes, element-wise ops fused into them
included) and everything else (inductor's fused element-wise kernels; OpenVINO's other nodes).

Usage: ``python scripts/profile_inference_gap.py [--threads 2] [--calls 30]``; needs the ``openvino`` extra.
Run it alone: on a busy machine every OpenMP region waits for its second thread and the shares are noise.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from dabnet_lib.deploy.inference_variants import openvino_model, optimize
from dabnet_lib.machine import cpu_label
from dabnet_lib.model.dabnet import DABNet

#: 6.73 GFLOPs per 360x480 frame (README, "Inference").
FRAME_GFLOP = 6.73


def _torch_groups(threads: int, calls: int, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Median wall ms per call of the compiled variant, and its profiled self time (ms per call) by group."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # inductor's C++ kernels appear in the profiler by name
    model = DABNet(11).eval()
    run = optimize(model, "compiled", example_input=x, threads=threads)
    walls = []
    for _ in range(calls):
        t = time.perf_counter()
        run(x)
        walls.append((time.perf_counter() - t) * 1e3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            run(x)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key
        if "convolution" in name:
            group = "convolutions (oneDNN, with fused element-wise epilogues)"
        elif "cpp_fused" in name:
            group = "element-wise / BN / PReLU / concat (inductor C++ kernels)"
        else:
            continue  # wrappers and bookkeeping (their self time is listed as other below)
        groups[group] += event.self_cpu_time_total / 1e3 / calls
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3 / calls
    groups["other (launcher, allocation, guards)"] = total - sum(groups.values())
    return sorted(walls)[len(walls) // 2], dict(groups)


def _openvino_groups(threads: int, calls: int, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Median wall ms per call of OpenVINO fp32 and its per-layer real time (ms per call) by group."""
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": True,
    }
    compiled = ov.Core().compile_model(openvino_model(DABNet(11).eval(), x), "CPU", config)
    request, array = compiled.create_infer_request(), x.numpy()
    for _ in range(3):
        request.infer([array])
    walls, groups = [], defaultdict(float)
    for _ in range(calls):
        t = time.perf_counter()
        request.infer([array])
        walls.append((time.perf_counter() - t) * 1e3)
        for info in request.get_profiling_info():
            conv = "Convolution" in info.node_type
            group = (
                "convolutions (Convolution / GroupConvolution nodes, fused element-wise included)"
                if conv
                else f"other nodes: {info.node_type}"
            )
            groups[group] += info.real_time.total_seconds() * 1e3 / calls
    merged: dict[str, float] = defaultdict(float)
    for group, ms in groups.items():
        merged[group if group.startswith("convolutions") else "everything else (element-wise, concat, resize)"] += ms
    return sorted(walls)[len(walls) // 2], dict(merged)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, 360, 480, generator=torch.Generator().manual_seed(0))
    print(f"{cpu_label()}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    for name, measure in (("ours: compiled fp32", _torch_groups), ("OpenVINO fp32", _openvino_groups)):
        wall, groups = measure(args.threads, args.calls, x)
        print(f"{name}: {wall:.1f} ms per frame (median of {args.calls}), {FRAME_GFLOP / wall * 1e3:.0f} GFLOP/s")
        for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:7.2f} ms  {group}")


if __name__ == "__main__":
    main()
