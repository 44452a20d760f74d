"""What keeping freed host memory buys a CPU training step (:mod:`dabnet_lib.malloc_reuse`): two child processes,
one with glibc's default malloc and one after :func:`~dabnet_lib.malloc_reuse.keep_freed_memory`, each building the
same DABNet training step (fp32, fast ops; channels_last and torch.compile unless told otherwise), time blocks of
steps in turns, so that other load on the machine falls on both. Prints ms per step, minor page faults per step and
the ratio default / kept.

Usage: ``python scripts/measure_malloc_reuse.py [--threads 2] [--size 360 480] [--batch 8] [--rounds 4]
[--iters 3] [--no-compile] [--nchw]``. Run it alone: it uses every thread it is given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("default", "kept")


def child(args: argparse.Namespace) -> None:
    """One side: build the step, then time ``--iters`` steps per ``block`` line read from stdin."""
    from dabnet_lib.malloc_reuse import keep_freed_memory

    state = keep_freed_memory() if args.child == "kept" else "default"
    import torch

    from dabnet_lib.model.dabnet import DABNetConfig
    from dabnet_lib.training.autotune import Candidate, StepTimer

    torch.set_num_threads(args.threads)
    timer = StepTimer(11, DABNetConfig(), tuple(args.size), args.batch, fast_ops=True)
    candidate = Candidate("off", not args.nchw, not args.no_compile)
    warmup_s = timer.add(candidate)
    step = timer.runners[candidate]
    print(json.dumps({"ready": True, "malloc": state, "warmup_s": warmup_s}), flush=True)
    for line in sys.stdin:
        if line.strip() != "block":
            break
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps({"s_per_step": seconds / args.iters, "faults_per_step": faults / args.iters}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="timed blocks per side, taken in turns")
    ap.add_argument("--iters", type=int, default=3, help="steps per block")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--nchw", action="store_true", help="NCHW instead of channels_last")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if min(args.threads, args.batch, args.rounds, args.iters) < 1 or min(args.size) < 16:
        sys.exit("measure_malloc_reuse: --threads, --batch, --rounds and --iters must be >= 1 and --size >= 16")
    from dabnet_lib.machine import cpu_label
    from dabnet_lib.malloc_reuse import OPT_OUT_ENV

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop(OPT_OUT_ENV, None)
    argv = [sys.executable, __file__, "--threads", str(args.threads), "--size", *map(str, args.size)]
    argv += ["--batch", str(args.batch), "--iters", str(args.iters)]
    argv += ["--no-compile"] * args.no_compile + ["--nchw"] * args.nchw
    layout = f"fp32 {'NCHW' if args.nchw else 'channels_last'} {'eager' if args.no_compile else 'compiled'}"
    size = f"{args.size[0]}x{args.size[1]}"
    print(f"{cpu_label()}, {args.threads} thread(s), training step at {size}, batch {args.batch}, {layout}")
    procs = {}
    for kind in KINDS:  # built one after the other: compiling both at once would time nothing useful
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        proc = subprocess.Popen([*argv, "--child", kind], text=True, env=env, **pipes)
        assert proc.stdin is not None and proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "{}")
        if not ready.get("ready"):
            sys.exit(f"measure_malloc_reuse: the {kind} child failed to start (see its error above)")
        print(f"{kind}: malloc {ready['malloc']}, warm-up {ready['warmup_s']:.1f} s")
        procs[kind] = proc
    blocks: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            proc = procs[kind]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("block\n")
            proc.stdin.flush()
            blocks[kind].append(json.loads(proc.stdout.readline()))
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    mean = {k: sum(b["s_per_step"] for b in blocks[k]) / len(blocks[k]) for k in KINDS}
    for kind in KINDS:
        per_block = ", ".join(f"{1000 * b['s_per_step']:.0f}" for b in blocks[kind])
        faults = sum(b["faults_per_step"] for b in blocks[kind]) / len(blocks[kind])
        print(f"{kind:8s}: {1000 * mean[kind]:.0f} ms/step (blocks {per_block}), {faults:,.0f} minor page faults/step")
    print(f"ratio default/kept: {mean['default'] / mean['kept']:.2f}x")


if __name__ == "__main__":
    main()
