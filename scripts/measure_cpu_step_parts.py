"""Two measurements the README quotes, on this machine: the Adam step over DABNet's parameters per
implementation (torch's CPU default per-tensor loop, foreach, fused), and the CPU share
(:func:`dabnet_lib.machine.cpu_share`) of the autotuner's timed training steps at 180x240, batch 8.

Usage: ``python scripts/measure_cpu_step_parts.py [--threads 2]``; run it alone, and again beside other
jobs to see the share fall below ``BUSY_CPU_SHARE``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dabnet_lib.machine import BUSY_CPU_SHARE, cpu_label
from dabnet_lib.model.dabnet import DABNet, DABNetConfig
from dabnet_lib.training.autotune import Candidate, StepTimer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_label()}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    params = list(DABNet(11).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    for name, kw in (
        ("per-tensor loop (CPU default)", {"foreach": False}),
        ("foreach", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=2e-4, **kw)
        for _ in range(3):
            opt.step()
        t = time.perf_counter()
        for _ in range(20):
            opt.step()
        print(f"Adam step, {name}: {(time.perf_counter() - t) / 20 * 1000:.1f} ms ({len(params)} tensors)")
    timer = StepTimer(11, DABNetConfig(), (180, 240), 8, fast_ops=True)
    timer.add(Candidate("off", True, False))
    for _ in range(2):
        timer.time_round()
    print(f"CPU share of the timed training steps: {timer.cpu_share():.2f} (busy below {BUSY_CPU_SHARE})")


if __name__ == "__main__":
    main()
