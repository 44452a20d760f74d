"""Where the time of one 360x480 frame goes: our compiled fp32 variant (torch.profiler over inductor's kernels
and oneDNN's convolutions) beside OpenVINO fp32 (its per-layer performance counters), grouped the same way:
convolutions (oneDNN calls; OpenVINO's Convolution/GroupConvolution nodes, element-wise ops fused into them
included) and everything else. Both runs are instrumented, so their totals are a little above the wall time:
the frame times to compare come from ``dabnet fps`` (same flags), not from here.

Usage: ``python scripts/profile_inference_gap.py [--threads 2] [--calls 30]``; needs the ``openvino`` extra.
Run it alone: on a busy machine every OpenMP region waits for its second thread and the shares are noise.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from dabnet_lib.deploy.inference_variants import openvino_model, optimize
from dabnet_lib.machine import cpu_label
from dabnet_lib.model.dabnet import DABNet


def _torch_groups(threads: int, calls: int, x: torch.Tensor) -> dict[str, float]:
    """The compiled variant's profiled self time (ms per frame) by group."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # inductor's C++ kernels appear in the profiler by name
    run = optimize(DABNet(11).eval(), "compiled", example_input=x, threads=threads)
    for _ in range(3):
        run(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            run(x)
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if "convolution" in event.key:
            group = "convolutions (oneDNN, with the element-wise epilogues inductor fuses into them)"
        elif "cpp_fused" in event.key:
            group = "element-wise / PReLU / concat / interpolation (inductor C++ kernels)"
        else:
            group = "other (launcher, allocation, guards)"
        groups[group] += event.self_cpu_time_total / 1e3 / calls
    return dict(groups)


def _openvino_groups(threads: int, calls: int, x: torch.Tensor) -> dict[str, float]:
    """OpenVINO fp32's per-layer real time (ms per frame) by group."""
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
    groups: dict[str, float] = defaultdict(float)
    for _ in range(calls):
        request.infer([array])
        for info in request.get_profiling_info():
            if "Convolution" in info.node_type:
                group = "convolutions (Convolution / GroupConvolution nodes, fused element-wise included)"
            else:
                group = "everything else (element-wise, concat, resize)"
            groups[group] += info.real_time.total_seconds() * 1e3 / calls
    return dict(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, 360, 480, generator=torch.Generator().manual_seed(0))
    print(f"{cpu_label()}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    for name, measure in (("ours: compiled fp32", _torch_groups), ("OpenVINO fp32", _openvino_groups)):
        groups = measure(args.threads, args.calls, x)
        print(f"{name}: {sum(groups.values()):.1f} ms profiled per frame ({args.calls} frames)")
        for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:7.2f} ms  {group}")


if __name__ == "__main__":
    main()
