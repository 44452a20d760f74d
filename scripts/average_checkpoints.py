"""Weight averaging after training, with BatchNorm statistics recomputed: average the model weights of one or
more checkpoints (e.g. the last two ``epoch_XXXX.pt`` / ``last.pt`` of the full-resolution stage) and, with
``--bn-split``, recompute every BN's running mean and variance as a plain average over that split's full
images (train mode, no gradients), as SWA needs. Writes a checkpoint that ``dabnet test`` scores.

Usage: ``python scripts/average_checkpoints.py OUT.pt CKPT [CKPT ...] [--bn-split train --data-root DIR]``
(issue #11 measured it on val: README, "What each change bought").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dabnet_lib.data.datasets import build_dataset
from dabnet_lib.data.transforms import EvalTransform
from dabnet_lib.errors import DabnetError
from dabnet_lib.model.checkpoints import save_checkpoint
from dabnet_lib.model.dabnet import build_from_checkpoint, read_checkpoint
from dabnet_lib.paths import default_data_root


def average(args: argparse.Namespace) -> None:
    """Write ``args.out``: the mean weights of ``args.checkpoints`` (metadata of the last), BN optionally recomputed."""
    ckpts = [read_checkpoint(str(p)) for p in args.checkpoints]
    keys = list(ckpts[-1]["model"])
    odd = [str(p) for p, c in zip(args.checkpoints, ckpts, strict=True) if list(c["model"]) != keys]
    if odd:
        raise DabnetError(f"{', '.join(odd)}: another model than {args.checkpoints[-1]} (state-dict keys differ)")
    result = dict(ckpts[-1])  # metadata (recipe, mean, dataset) of the last one
    states = [c["model"] for c in ckpts]
    result["model"] = {
        k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
        for k, v in states[-1].items()
    }
    if args.bn_split:
        model, _ = build_from_checkpoint(result)
        model = model.to(memory_format=torch.channels_last)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over all batches
        dataset = result.get("dataset", "camvid")
        data = build_dataset(dataset, args.data_root or default_data_root(dataset), args.bn_split)
        data.transform = EvalTransform(result["mean"], result.get("std"))
        model.train()
        with torch.no_grad():
            for i in range(0, len(data), args.batch):
                batch = [data[j][0] for j in range(i, min(i + args.batch, len(data)))]
                model(torch.stack(batch).contiguous(memory_format=torch.channels_last))
        result["model"] = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(result, args.out)
    print(
        f"wrote {args.out}: mean of {len(states)} checkpoint(s)" + (f", BN on {args.bn_split}" if args.bn_split else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--bn-split", default=None, help="recompute BN statistics on this split (e.g. train)")
    ap.add_argument("--data-root", default=None, help="default: data/<the checkpoint's dataset>")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    try:
        average(args)
    except DabnetError as exc:  # unreadable checkpoint, other model, missing data: one line, no traceback
        sys.exit(f"average_checkpoints: {exc}")


if __name__ == "__main__":
    main()
