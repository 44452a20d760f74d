"""Where fusing BN+PReLU pays: forward + backward of one BNPReLU per distinct activation shape of DABNet at the
given input size and batch, unfused (BN, then the fast PReLU: ``use_fast_ops`` without ``bn_prelu``) against
:class:`dabnet_lib.model.fast_ops.FastBNPReLU` forced on at every size, in interleaved rounds.
The evidence behind ``FUSED_BN_PRELU_MIN_ELEMENTS``.

Usage: ``python scripts/measure_bn_prelu_fusion.py [--threads 2] [--size 180 240] [--batch 8]``
(``--size 64 96 --batch 4``: the smoke profile's sizes). Run it alone.
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


def bn_prelu_shapes(size: tuple[int, int], batch: int) -> list[tuple[int, ...]]:
    """Distinct input shapes (N, C, H, W) of DABNet's BNPReLU modules for an input of ``size`` and ``batch``."""
    shapes: set[tuple[int, ...]] = set()
    model = DABNet(11).train()
    for m in model.modules():
        if isinstance(m, BNPReLU):
            m.register_forward_pre_hook(lambda _m, a: shapes.add(tuple(a[0].shape)))
    with torch.no_grad():
        model(torch.randn(batch, 3, *size))
    return sorted(shapes, key=lambda s: torch.Size(s).numel())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threshold = fast_ops.FUSED_BN_PRELU_MIN_ELEMENTS
    fast_ops.FUSED_BN_PRELU_MIN_ELEMENTS = 0  # time the fused function at every size
    print(f"{cpu_label()}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    print(f"threshold in use: {threshold:,} elements; forward + backward per call, mean of the timed rounds")
    for shape in bn_prelu_shapes(tuple(args.size), args.batch):
        unfused = fast_ops.use_fast_ops(BNPReLU(shape[1]).train())
        fused = fast_ops.use_fast_ops(copy.deepcopy(unfused), bn_prelu=True)
        x = torch.randn(shape, requires_grad=True)
        grad = torch.randn(shape)
        seconds = {"unfused": 0.0, "fused": 0.0}
        for r in range(args.rounds + 1):  # round 0: warm-up (allocations, the first compile)
            for name, module in (("unfused", unfused), ("fused", fused)):
                start = time.perf_counter()
                for _ in range(args.iters):
                    module(x).backward(grad)
                if r:
                    seconds[name] += time.perf_counter() - start
        ms = {k: v / (args.rounds * args.iters) * 1e3 for k, v in seconds.items()}
        n = torch.Size(shape).numel()
        print(
            f"{'x'.join(map(str, shape)):>14} {n:>10,} elements: unfused {ms['unfused']:6.2f} ms, "
            f"fused {ms['fused']:6.2f} ms ({ms['unfused'] / ms['fused']:.2f}x){'' if n >= threshold else '  below'}"
        )


if __name__ == "__main__":
    main()
