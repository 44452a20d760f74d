"""A CamVid folder whose ``val`` is one whole video sequence held out of training.

CamVid's ``val`` (101 frames) comes from sequence 0016E5, the same sequence as 204 of the 367 ``train``
frames, while ``test`` is 171 frames of Seq05VD, a sequence no training frame comes from, and 62 of 0001TP.
So ``val`` measures generalisation within a sequence and ``test`` mostly across sequences. This script writes
a folder (symlinks to the real data plus official-style list files, nothing copied) where:

- ``train`` = every ``trainval`` frame except those of ``--hold-out`` (for 0006R0: 367 frames, as many as
  CamVid's ``train``);
- ``val`` = the ``--hold-out`` sequence's frames (for 0006R0: 101, as many as CamVid's ``val``);
- ``test`` = CamVid's test, untouched (not for selection).

Usage: ``python scripts/make_sequence_holdout.py --source data/camvid --dest data/camvid_holdout_0006R0``
then ``dabnet train --train-type train --data-root data/camvid_holdout_0006R0 ...`` and
``dabnet test --split val --data-root data/camvid_holdout_0006R0 ...`` (issue #11: README, "What each change
bought").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dabnet_lib.atomic_files import write_text_atomic
from dabnet_lib.data.datasets import build_dataset
from dabnet_lib.errors import DabnetError

FOLDERS = ("train", "trainannot", "val", "valannot", "test", "testannot")


def _relative(path: Path, root: Path) -> str:
    return str(path.resolve().relative_to(root.resolve()))


def make_holdout(source: Path, dest: Path, sequence: str) -> tuple[int, int]:
    """Write ``dest`` (see the module docstring); returns (training frames, held-out frames)."""
    trainval = build_dataset("camvid", source, "trainval")
    held = [s for s in trainval.samples if Path(s[0]).name.startswith(sequence + "_")]
    kept = [s for s in trainval.samples if not Path(s[0]).name.startswith(sequence + "_")]
    if not held:
        names = sorted({Path(s[0]).name.split("_")[0] for s in trainval.samples})
        raise DabnetError(f"no trainval frame of sequence {sequence!r} in {source}; sequences: {', '.join(names)}")
    dest.mkdir(parents=True, exist_ok=True)
    for folder in FOLDERS:
        link = dest / folder
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to((source / folder).resolve(), target_is_directory=True)
    for split, samples in (("train", kept), ("val", held)):
        lines = [f"{_relative(i, source)} {_relative(lab, source)}" for i, lab in samples if lab is not None]
        write_text_atomic(dest / f"camvid_{split}_list.txt", "\n".join(lines) + "\n")
    return len(kept), len(held)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("data/camvid"), help="CamVid folder (SegNet layout)")
    parser.add_argument("--dest", type=Path, required=True, help="folder to write (symlinks and list files)")
    parser.add_argument("--hold-out", default="0006R0", help="sequence prefix to hold out (default 0006R0)")
    args = parser.parse_args(argv)
    try:
        kept, held = make_holdout(args.source, args.dest, args.hold_out)
    except DabnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dest}: train {kept} frames, val {held} frames of {args.hold_out} (test untouched)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
