"""Where fusing BN+PReLU pays: forward + backward of every BNPReLU of DABNet at its own activation shape
(input 180x240, batch 8 by default), the stock pair against :class:`dabnet_lib.model.fast_ops.FastBNPReLU`,
timed in interleaved rounds, grouped by activation size against ``FUSED_BN_PRELU_MIN_ELEMENTS``.

Usage: ``python scripts/measure_bn_prelu_fusion.py [--threads 2] [--channels-last] [--all]``
(``--all``: the fused function for every size, to see what the threshold leaves out). Run it alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch

from dabnet_lib.machine import cpu_label
from dabnet_lib.model import fast_ops
from dabnet_lib.model.dabnet import BNPReLU, DABNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--all", action="store_true", help="fuse every size (threshold 0)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threshold = fast_ops.FUSED_BN_PRELU_MIN_ELEMENTS
    if args.all:
        fast_ops.FUSED_BN_PRELU_MIN_ELEMENTS = 0
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"{cpu_label()}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    shapes: list[tuple[int, ...]] = []
    model = DABNet(11).train()
    hooks = [
        m.register_forward_pre_hook(lambda _m, a: shapes.append(tuple(a[0].shape)))
        for m in model.modules()
        if isinstance(m, BNPReLU)
    ]
    with torch.no_grad():
        model(torch.randn(args.batch, 3, *args.size))
    for h in hooks:
        h.remove()
    cases = []
    for shape in shapes:
        stock = BNPReLU(shape[1]).train()
        fused = fast_ops.use_fast_ops(copy.deepcopy(stock), bn_prelu=True)
        x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_(True)
        cases.append((shape, stock, fused, x, torch.randn(shape).contiguous(memory_format=fmt)))
    seconds = {(s, k): 0.0 for s, *_ in cases for k in ("stock", "fused")}
    for r in range(args.rounds + 1):  # round 0: warm-up (builds the fused function)
        for shape, stock, fused, x, g in cases:
            for kind, module in (("stock", stock), ("fused", fused)):
                t = time.perf_counter()
                module(x).backward(g)
                if r:
                    seconds[(shape, kind)] += time.perf_counter() - t
    small = "below it (fused too: --all)" if args.all else "below it (stock path in both)"
    for label, keep in (("at or above the threshold", lambda n: n >= threshold), (small, lambda n: n < threshold)):
        chosen = [s for s, *_ in cases if keep(torch.Size(s).numel())]
        if chosen:
            st = sum(seconds[(s, "stock")] for s in chosen) / args.rounds * 1e3
            fu = sum(seconds[(s, "fused")] for s in chosen) / args.rounds * 1e3
            print(f"{label}: {len(chosen)} modules, stock pair {st:.1f} ms, FastBNPReLU {fu:.1f} ms ({st / fu:.2f}x)")
    layout = "channels_last" if args.channels_last else "NCHW"
    size = f"input {args.size[0]}x{args.size[1]}, batch {args.batch}"
    print(f"per training step (forward + backward); threshold {threshold} elements, {layout}, {size}")


if __name__ == "__main__":
    main()
