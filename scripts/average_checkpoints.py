"""Weight averaging after training, with BatchNorm statistics recomputed: average the model weights of one or
more checkpoints (e.g. the last two ``epoch_XXXX.pt`` / ``last.pt`` of the full-resolution stage) and, with
``--bn-split``, recompute every BN's running mean and variance as a plain average over that split's full
images (train mode, no gradients), as SWA needs. Writes a checkpoint that ``dabnet test`` scores.

Usage: ``python scripts/average_checkpoints.py OUT.pt CKPT [CKPT ...] [--bn-split train --data-root DIR]``
(issue #11 measured it on val: README, "What each change bought").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dabnet_lib.data.datasets import build_dataset
from dabnet_lib.data.transforms import EvalTransform
from dabnet_lib.model.checkpoints import save_checkpoint
from dabnet_lib.model.dabnet import build_from_checkpoint, read_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--bn-split", default=None, help="recompute BN statistics on this split (e.g. train)")
    ap.add_argument("--data-root", default="data/camvid")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    ckpts = [read_checkpoint(str(p)) for p in args.checkpoints]
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
        data = build_dataset(result.get("dataset", "camvid"), args.data_root, args.bn_split)
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


if __name__ == "__main__":
    main()
