"""Are denormal floats behind a slow training phase? For each checkpoint: the share of denormal values in the
logits' gradient of one training step on the first 8 ``train`` images at 180x240, and the step time (fast ops,
channels_last, eager, fused Adam) with ``torch.set_flush_denormal`` off and on, alternating.

Usage: ``python scripts/check_denormals.py CKPT [CKPT ...] [--threads 1] [--data-root DIR]``. Run it alone.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2
import torch

from dabnet_lib.data.datasets import build_dataset
from dabnet_lib.data.transforms import normalize
from dabnet_lib.errors import DabnetError
from dabnet_lib.machine import cpu_label
from dabnet_lib.model.dabnet import build_from_checkpoint
from dabnet_lib.model.fast_ops import use_fast_ops
from dabnet_lib.paths import default_data_root


def check(path: str, data_root: str | None, steps: int) -> None:
    """Print the denormal share and the step times of checkpoint ``path``."""
    model, ckpt = build_from_checkpoint(path)
    dataset = ckpt.get("dataset", "camvid")
    data = build_dataset(dataset, data_root or default_data_root(dataset), "train")
    pairs = [data.load(i) for i in range(8)]
    x = torch.stack(
        [normalize(cv2.resize(img, (240, 180), interpolation=cv2.INTER_LINEAR), ckpt["mean"]) for img, _ in pairs]
    )
    y = torch.stack(
        [torch.from_numpy(cv2.resize(lab, (240, 180), interpolation=cv2.INTER_NEAREST)).long() for _, lab in pairs]
    )
    x = x.contiguous(memory_format=torch.channels_last)
    model = use_fast_ops(model).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=data.info.ignore_index)

    def step() -> torch.Tensor:
        out = model(x)
        out.retain_grad()
        opt.zero_grad()
        loss_fn(out, y).backward()
        opt.step()
        return out.grad

    grad = step()
    tiny = (grad != 0) & (grad.abs() < torch.finfo(torch.float32).tiny)
    print(f"{path}: denormal share of the logits' gradient {tiny.float().mean().item():.6f}")
    for flush in (False, True, False, True):
        torch.set_flush_denormal(flush)
        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(f"  flush_denormal={flush}: {(time.perf_counter() - start) / steps * 1e3:.0f} ms/step")
    torch.set_flush_denormal(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_label()}, {args.threads} threads, torch {torch.__version__}")
    try:
        for path in args.checkpoints:
            check(path, args.data_root, args.steps)
    except DabnetError as exc:
        sys.exit(f"check_denormals: {exc}")


if __name__ == "__main__":
    main()
