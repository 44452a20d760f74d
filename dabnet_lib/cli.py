"""The ``dabnet`` command line (also ``python -m dabnet_lib.cli``).

Each sub-command has a ``_add_<name>(subparsers)`` that declares its flags and a ``_run_<name>(args)``
that calls into the library. Errors derived from :class:`dabnet_lib.errors.DabnetError` print one
line and exit with status 2; nothing here holds logic a test cannot reach through the library.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import DabnetError
from .paths import default_data_root

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only inside the command that needs them
    from .evaluation.inference import Source
    from .model.dabnet import DABNet
    from .training.recipes import Recipe

Runner = Callable[[argparse.Namespace], int | None]
Adder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# name -> (function adding the sub-parser, function running it); filled by the sections below.
_COMMANDS: dict[str, tuple[Adder, Runner]] = {}


# ----------------------------------------------------------------- train / test / predict / stats
# (engine section: owned by the engine work)

# --- train / stats / bench-train
# (engine work: dabnet_lib.training.engine, dabnet_lib.training.recipes, dabnet_lib.deploy.bench)


def _size_arg(text: str) -> tuple[int, int]:
    """``H,W`` (or ``HxW``) -> (H, W)."""
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 360,480), got {text!r}") from None
    return h, w


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .training.recipes import DATASET_NAMES, PROFILES

    p = sub.add_parser(
        "train",
        help="train DABNet with a paper recipe or a budget profile (smoke | cpu | paper)",
        description="Train DABNet. The recipe is the profile's (smoke: seconds; cpu: a 2-core CPU budget; paper: "
        "as published) with the flags below and --set FIELD=VALUE on top. Writes OUT/last.pt, best.pt, "
        "epoch_XXXX.pt, metrics.jsonl, curves.png, recipe.json, summary.json. Ctrl-C (or SIGTERM) "
        "saves a resumable checkpoint; --resume continues exactly. Multi-process: "
        "torchrun --nproc_per_node=N -m dabnet_lib.cli train ...",
        epilog="example: dabnet train --dataset camvid --profile smoke --out runs/smoke",
    )
    p.add_argument("--dataset", choices=DATASET_NAMES, default="camvid", help="dataset (default camvid)")
    p.add_argument("--profile", choices=PROFILES, default="paper", help="recipe profile (default paper)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default data/<dataset>)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<dataset>_<profile>)")
    p.add_argument("--train-type", choices=("train", "trainval"), default=None, help="training split")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N", help="epochs")
    p.add_argument("--minutes", type=float, default=None, metavar="M", help="wall-clock training budget in minutes")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="base learning rate")
    p.add_argument("--input-size", type=_size_arg, default=None, metavar="H,W", help="training crop size")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--num-workers", type=int, default=None, metavar="N", help="DataLoader workers (0 = in-process)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="PATH",
        help="continue from OUT/last.pt (or from PATH)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help="override any recipe field, e.g. --set val_every=5 --set crop_size=256,320 (repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")
    p.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        help="write no TensorBoard event files (default: into OUT, see `make tensorboard`)",
    )


def _recipe_from_args(args: argparse.Namespace) -> Recipe:
    from .training.recipes import get_recipe

    recipe = get_recipe(args.dataset, args.profile)
    named = {
        "train_split": args.train_type,
        "epochs": args.max_epochs,
        "minutes": args.minutes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "crop_size": args.input_size,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "sync_bn": args.sync_bn or None,
    }
    recipe = recipe.replace(**{k: v for k, v in named.items() if v is not None})
    return recipe.override(args.overrides)


def _run_train(args: argparse.Namespace) -> int:
    from .training.engine import TrainingInterrupted, fit

    recipe = _recipe_from_args(args)
    out = args.out or f"runs/{args.dataset}_{args.profile}"
    callbacks = _tensorboard(out, recipe) if args.tensorboard else []
    try:
        fit(recipe, args.data_root, out, resume=args.resume, device=args.device, quiet=args.quiet, callbacks=callbacks)
    except TrainingInterrupted as exc:
        print(f"dabnet train: interrupted by signal {exc.signum}; resume with --resume --out {out}", file=sys.stderr)
        return exc.exit_code
    return 0


def _tensorboard(out: str, recipe: Recipe) -> list:
    """The TensorBoard callback for ``dabnet train`` (the install hint goes to stderr, from rank 0 only)."""
    from .workbook.tensorboard_log import tensorboard_callbacks

    def hint(msg: str) -> None:
        if os.environ.get("RANK", "0") == "0":
            print(f"dabnet train: {msg}", file=sys.stderr)

    return tensorboard_callbacks(out, recipe.to_dict(), log=hint)


def _add_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .data.datasets import SPLITS
    from .training.recipes import DATASET_NAMES

    p = sub.add_parser(
        "stats",
        help="mean, std and class weights of a split (cached)",
        description="Per-channel RGB mean and std (0..255), class frequencies and the class weights "
        "1/ln(1.10 + p) of a split, computed once and cached as JSON.",
    )
    p.add_argument("--dataset", choices=DATASET_NAMES, default="camvid", help="dataset (default camvid)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default data/<dataset>)")
    p.add_argument("--split", choices=SPLITS, default="train", help="split (default train)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_stats(args: argparse.Namespace) -> int:
    import json

    from .data.datasets import build_dataset, get_info
    from .data.statistics import statistics

    info = get_info(args.dataset)
    ds = build_dataset(args.dataset, args.data_root or default_data_root(args.dataset), args.split)
    st = statistics(ds, progress=not args.quiet)
    if args.json:
        print(json.dumps(st))
        return 0

    def fmt(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print(f"{info.name} {args.split}: {st['num_images']} images ({ds.root})")
    print(f"mean (RGB, 0..255): {fmt(st['mean'])}   (official release: {fmt(info.official_mean)})")
    print(f"std  (RGB, 0..255): {fmt(st['std'])}")
    print(f"{'class':<16}{'frequency %':>12}{'weight':>9}")
    for name, p, w in zip(info.classes, st["class_frequencies"], st["class_weights"], strict=True):
        print(f"{name:<16}{100 * p:>12.2f}{w:>9.2f}")
    print(f"cache: {st.get('cache_file')}")
    return 0


def _add_bench_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench-train",
        help="training images/s: official-style loop vs this engine",
        description="Measure training throughput on CPU for (a) a plain loop as the official train.py "
        "does it (per-sample cv2 decode, NCHW, fp32, lr recomputed by hand every step, 4 "
        "workers) and (b) this engine as the cpu profile's autotuner chooses to train on "
        "this machine (or as --amp/--channels-last/--compile say; --sweep: every way), "
        "alternating in rounds in the same run so that other processes' load falls on "
        "all, and print each and its ratio to (a).",
    )
    p.add_argument("--data-root", default=None, metavar="DIR", help="CamVid folder (default data/camvid)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument(
        "--input-size",
        type=_size_arg,
        default=None,
        metavar="H,W",
        help="crop (default: the cpu profile's first-stage crop, recipes.CPU_CROP)",
    )
    p.add_argument("--iters", type=int, default=4, help="timed iterations per loop and round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of all loops (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before the first round (default 1)")
    p.add_argument("--num-workers", type=int, default=0, help="engine DataLoader workers (default 0)")
    p.add_argument("--official-workers", type=int, default=4, help="official loop's workers (its default: 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for all loops (default: all cores)")
    p.add_argument(
        "--amp",
        choices=("auto", "off", "bf16"),
        default="auto",
        help="engine autocast on CPU (default auto: measured, as the cpu profile)",
    )
    p.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="engine memory layout (default auto: measured)",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the engine's model (default auto: measured)",
    )
    p.add_argument(
        "--fast-ops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the engine with dabnet_lib.model.fast_ops (default: as training decides, on for CPU)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="time every way to train (fp32/bf16 x NCHW/channels_last x eager/compiled, ~10 min)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_bench_train(args: argparse.Namespace) -> int:
    import json

    import torch

    from .data.datasets import CAMVID
    from .deploy.bench import bench_train, format_bench
    from .machine import has_bf16_units
    from .model.dabnet import DABNetConfig
    from .model.fast_ops import fast_ops_rule
    from .training.autotune import Candidate, candidate_space, choose
    from .training.recipes import CPU_CROP, get_recipe
    from .training.step import bf16_channels_last_grad_error

    if args.input_size is None:
        args.input_size = CPU_CROP
    onoff: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}
    fast = fast_ops_rule("cpu") if args.fast_ops is None else args.fast_ops
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    status: dict[Candidate, str] = {}
    if args.sweep:
        cands = [Candidate(a, cl, comp) for a in ("off", "bf16") for cl in (False, True) for comp in (False, True)]
        _, refused = candidate_space("auto", "auto", "auto", has_bf16_units(), lambda: bf16_channels_last_grad_error())
        for row in refused:
            status[Candidate(row["amp"], row["channels_last"], row["compile"])] = "autotune refuses: " + row["reason"]
    else:
        choice = choose(
            args.amp,
            onoff[args.channels_last],
            onoff[args.compile],
            torch.device("cpu"),
            CAMVID.num_classes,
            DABNetConfig(),
            args.input_size,
            args.batch_size,
            torch.get_num_threads(),
            log=lambda m: print(m, flush=True),
            fast_ops=fast,
            bn_prelu=get_recipe("camvid", "cpu").fused_bn_prelu,
        )
        if not args.json:
            print("\n".join(choice.describe()), flush=True)
        cands = [choice.candidate]
        status[choice.candidate] = f"the choice ({choice.source})"
    result = bench_train(
        args.data_root or default_data_root("camvid"),
        cands,
        batch_size=args.batch_size,
        input_size=args.input_size,
        iters=args.iters,
        rounds=args.rounds,
        warmup=args.warmup,
        num_workers=args.num_workers,
        official_workers=args.official_workers,
        threads=args.threads,
        status=status,
        fast_ops=fast,
    )
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


_COMMANDS["train"] = (_add_train, _run_train)
_COMMANDS["stats"] = (_add_stats, _run_stats)
_COMMANDS["bench-train"] = (_add_bench_train, _run_bench_train)


# --- test / predict (eval work: dabnet_lib.evaluation.evaluation, dabnet_lib.evaluation.inference)


def _add_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .data.datasets import DATASETS, SPLITS

    p = sub.add_parser(
        "test",
        help="evaluate a checkpoint on a split (per-class IoU, mIoU, pixel accuracy)",
        description="Evaluate a checkpoint at full label resolution. Prints a per-class IoU table, mIoU "
        "(standard and the official code's), pixel accuracy and the share of time spent in "
        "metric updates; --json prints one JSON object instead.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="checkpoint file; with --best-of-last, a run folder (or any file in it)",
    )
    p.add_argument("--dataset", default=None, help=f"{' | '.join(DATASETS)} (default: the checkpoint's own dataset)")
    p.add_argument("--split", choices=SPLITS, default="test", help=f"{' | '.join(SPLITS)} (default: test)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default: data/<dataset>)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images; default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="resize images by this factor; logits are upsampled back to the label size (default 1)",
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N images")
    p.add_argument(
        "--best-of-last",
        type=int,
        default=None,
        metavar="K",
        help="evaluate the last K epoch_XXXX.pt of the run and report the best; this selects "
        "on the evaluated split (as the official test.py --best), so the number is optimistic",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_test(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .atomic_files import write_bytes_atomic
    from .evaluation.evaluation import best_of_last, evaluate_checkpoint, format_result, result_to_json

    if args.batch_size < 1:
        raise DabnetError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.scale <= 0:
        raise DabnetError(f"--scale must be > 0, got {args.scale}")
    common = {
        "split": args.split,
        "data_root": args.data_root,
        "dataset": args.dataset,
        "device": args.device,
        "batch_size": args.batch_size,
        "progress": not args.quiet,
        "scale": args.scale,
        "num_workers": args.num_workers,
        "limit": args.limit,
    }
    ckpt = Path(args.checkpoint)
    if args.best_of_last is not None:
        if args.best_of_last < 1:
            raise DabnetError(f"--best-of-last must be >= 1, got {args.best_of_last}")
        result = best_of_last(ckpt if ckpt.is_dir() else ckpt.parent, args.best_of_last, **common)
    else:
        result = evaluate_checkpoint(ckpt, **common)
    payload = result_to_json(result)
    text = json.dumps(payload, indent=None if args.json else 2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.out, (text + "\n").encode())
    print(json.dumps(payload) if args.json else format_result(result))
    return 0


def _add_predict(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .evaluation.inference import WRITE_KINDS

    p = sub.add_parser(
        "predict",
        help="predict a split or a folder of images; label, colour and overlay PNGs",
        description="Predict every image of a split (--split) or a folder (--input, searched recursively) "
        "and write OUT/label/*.png (uint8 train ids), OUT/color/*.png and OUT/overlay/*.png; "
        "or, with --cityscapes-submission, official Cityscapes result files (labelIds, "
        "<city>_<seq>_<frame>_leftImg8bit.png) into OUT.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", default=None, help="a split of the dataset: train | val | trainval | test")
    src.add_argument("--input", default=None, metavar="DIR", help="any folder of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--dataset", default=None, help="dataset of the checkpoint (default: its own dataset key)")
    p.add_argument(
        "--data-root", default=None, metavar="DIR", help="dataset folder for --split (default: data/<dataset>)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--scale", type=float, default=1.0, help="inference scale; outputs keep the input size (default 1)")
    p.add_argument(
        "--write",
        default=",".join(WRITE_KINDS),
        help=f"comma list of outputs among {','.join(WRITE_KINDS)} (default: all)",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    p.add_argument(
        "--cityscapes-submission",
        action="store_true",
        help="write Cityscapes submission files (trainId -> labelId) instead",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.datasets import build_dataset
    from .evaluation.inference import Predictor, export_cityscapes, predict_folder

    if args.scale <= 0:
        raise DabnetError(f"--scale must be > 0, got {args.scale}")
    if not 0.0 <= args.alpha <= 1.0:
        raise DabnetError(f"--alpha must be in 0..1, got {args.alpha}")
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, scale=args.scale, dataset=args.dataset)
    info = predictor.info
    assert info is not None
    source: Source
    if args.split is not None:
        root = Path(args.data_root) if args.data_root else default_data_root(info.name)
        source = build_dataset(info.name, root, args.split)
    else:
        source = Path(args.input)
    if args.cityscapes_submission:
        if info.name != "cityscapes":
            raise DabnetError(
                f"--cityscapes-submission needs a Cityscapes checkpoint; {args.checkpoint} is {info.name}"
            )
        paths = export_cityscapes(predictor, source, args.out, progress=not args.quiet)
        print(f"wrote {len(paths)} Cityscapes submission files (labelIds) to {args.out}")
        return 0
    kinds = [k.strip() for k in args.write.split(",") if k.strip()]
    written = predict_folder(
        predictor, source, args.out, info=info, write=kinds, alpha=args.alpha, progress=not args.quiet
    )
    for kind, paths in written.items():
        print(f"wrote {len(paths)} {kind} PNGs to {Path(args.out) / kind}")
    return 0


_COMMANDS["test"] = (_add_test, _run_test)
_COMMANDS["predict"] = (_add_predict, _run_predict)


# ----------------------------------------------------------------- fps / export
# (profiling section: owned by the profiling work)


def _profiling_hw(text: str) -> tuple[int, int]:
    """``H,W`` (or ``HxW``) -> (H, W), both >= 16."""
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 360,480), got {text!r}") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"H and W must be >= 16, got {text!r}")
    return h, w


def _profiling_model(args: argparse.Namespace) -> tuple[DABNet, dict[str, Any], str]:
    """(model in eval mode, checkpoint dict or {}, a short description of the weights)."""
    from .model.dabnet import DABNet, build_from_checkpoint

    if args.checkpoint:
        model, ckpt = build_from_checkpoint(args.checkpoint)
        return model, ckpt, f"checkpoint {args.checkpoint}"
    return DABNet(args.num_classes).eval(), {}, "random init (timing only: no checkpoint given)"


def _add_profiling_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="weights to use (default: random init)")
    p.add_argument("--num-classes", type=int, default=11, help="classes of the random-init model (default 11)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, = cores)")


def _add_fps(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .deploy.inference_variants import VARIANTS

    p = sub.add_parser(
        "fps",
        help="time optimised inference variants against eager (ms, FPS, speed-up, parity)",
        description="Build each variant, check it against eager (fp32: max relative logit difference "
        "<= 1e-3; int8: predicted-label agreement on CamVid val images) and time them "
        "interleaved in rounds on the CPU. Speed-ups are against eager measured in the same run. "
        "Exit status 1 when an fp32 variant fails its check; unknown or unavailable variants "
        "get an error row and the others still run.",
    )
    p.add_argument("size", type=_profiling_hw, metavar="H,W", help="input resolution, e.g. 360,480")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--variants", default="all", help=f"all | comma list of: {', '.join(VARIANTS)} (default all)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per variant (default 5)")
    p.add_argument("--iters", type=int, default=30, help="timed calls per variant (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each round wait up to S seconds for the CPUs to be otherwise idle "
        "(for a shared machine; default 0 = don't wait)",
    )
    p.add_argument(
        "--data-root",
        default=str(default_data_root("camvid")),
        metavar="DIR",
        help="CamVid folder for int8 calibration (train) and checks (val) (default data/camvid)",
    )
    p.add_argument("--calibration-images", type=int, default=8, metavar="N", help="int8 calibration images (default 8)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) | cuda | cuda:N: on CUDA times eager, channels_last, folded, compiled, fp16 "
        "and bf16 with CUDA events; CPU-only variants get a 'cpu only' row",
    )
    _add_profiling_common(p)
    p.add_argument(
        "--val-miou",
        action="store_true",
        help="also score eager, folded and int8 on every val image of --data-root with --checkpoint "
        "(trained weights) and print int8's mIoU drop against the 1.0-point target",
    )
    p.add_argument("--json", action="store_true", help="print one JSON list of rows (progress goes to stderr)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def _print_val_miou(args: argparse.Namespace) -> None:
    """``dabnet fps --val-miou``: eager vs folded vs int8 val mIoU (to stderr when --json)."""
    from .deploy.variant_accuracy import INT8_MAX_MIOU_DROP, variant_miou

    out = sys.stderr if args.json else sys.stdout
    rows = variant_miou(
        args.checkpoint, args.data_root, ("folded", "int8"), split="val", calibration_count=args.calibration_images
    )
    for r in rows:
        text = r["error"] or f"{r['miou']:.2f}% mIoU on {r['images']} {r['split']} images, drop {r['drop']:+.2f} points"
        print(f"{r['variant']}: {text}", file=out)
    int8 = rows[-1]
    if int8["drop"] is not None:
        verdict = "met" if int8["drop"] <= INT8_MAX_MIOU_DROP else "NOT met"
        print(f"target int8 mIoU drop <= {INT8_MAX_MIOU_DROP:.1f} point: {int8['drop']:.2f}, {verdict}", file=out)


def _run_fps(args: argparse.Namespace) -> int:
    import json

    from .data.datasets import get_info
    from .deploy.inference_variants import INT8_VARIANTS
    from .deploy.profiling import benchmark, calibration_images, describe, format_table, parse_variants, target_verdicts

    if args.val_miou and not args.checkpoint:
        raise DabnetError(
            "dabnet fps --val-miou needs trained weights: add --checkpoint PATH "
            "(e.g. reports/checkpoints/dabnet_camvid_cpu.pt)"
        )
    on_cpu = args.device == "cpu"
    if not on_cpu:
        from .devices import require_cuda

        require_cuda(f"dabnet fps --device {args.device}")
    model, ckpt, weights = _profiling_model(args)
    log = None if args.quiet else (lambda msg: print(f"dabnet fps: {msg}", file=sys.stderr, flush=True))
    calibration = check = None
    calibration_error = None
    if on_cpu and set(INT8_VARIANTS) & set(parse_variants(args.variants)):
        dataset = ckpt.get("dataset") or "camvid"
        mean = ckpt.get("mean") or get_info(dataset).official_mean
        try:
            calibration = calibration_images(args.data_root, args.size, args.calibration_images, "train", mean)
            check = calibration_images(args.data_root, args.size, 4, "val", mean)
        except DabnetError as exc:
            calibration_error = f"no CamVid calibration images ({exc}); pass --data-root DIR or run `make data`"
    rows = benchmark(
        model,
        args.size,
        args.variants,
        batch=args.batch,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        calibration=calibration,
        check_inputs=check,
        calibration_error=calibration_error,
        idle_wait_s=args.idle_wait,
        log=log,
        device=args.device,
    )
    info = describe(model, args.size, rows, weights)
    for row in rows:
        row.update(gflops=info["gflops"], params=info["params"], weights=weights)
    if args.json:
        print(json.dumps(rows))
    else:
        print("\n".join(info["lines"]))
        print(format_table(rows))
        if on_cpu:  # the speed targets are CPU targets
            print("\n".join(target_verdicts(rows, info["gflops"])))
    if args.val_miou:
        _print_val_miou(args)
    failed = [r["variant"] for r in rows if r["variant"] not in INT8_VARIANTS and r["parity_ok"] is False]
    if failed:
        print(f"dabnet fps: parity check FAILED for {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export the model to ONNX or OpenVINO IR, checked against PyTorch before it is written",
        description="Export to ONNX or OpenVINO IR (dynamic batch, height, width), run it in onnxruntime or "
        "OpenVINO and compare with PyTorch (max relative logit difference <= 1e-3) before writing "
        "--out atomically (OpenVINO: --out is the .xml; the weights go beside it as .bin).",
    )
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx", help="output format (default onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. dabnet.onnx or dabnet.xml")
    p.add_argument(
        "--input-size",
        type=_profiling_hw,
        default=(360, 480),
        metavar="H,W",
        help="size traced and checked (the file accepts any size; default 360,480)",
    )
    _add_profiling_common(p)


def _run_export(args: argparse.Namespace) -> int:
    from .deploy.profiling import export_onnx, export_openvino

    model, _ckpt, weights = _profiling_model(args)
    if args.format == "openvino":
        result = export_openvino(model, args.out, args.input_size, threads=args.threads)
        h, w = result["input_size"]
        print(
            f"wrote {result['path']} and {result['bin_path']} ({result['bytes'] / 1e6:.2f} MB, OpenVINO IR, "
            f"{weights}); OpenVINO matches PyTorch at {h}x{w}: max relative logit difference "
            f"{result['max_rel_diff']:.1e}"
        )
        return 0
    result = export_onnx(model, args.out, args.input_size, threads=args.threads)
    h, w = result["input_size"]
    print(
        f"wrote {result['path']} ({result['bytes'] / 1e6:.2f} MB, ONNX opset {result['opset']}, {weights}); "
        f"onnxruntime matches PyTorch at {h}x{w}: max relative logit difference {result['max_rel_diff']:.1e}"
    )
    return 0


def _add_bench_ops(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench-ops",
        help="training step: stock ops vs the fast exact ops (dabnet_lib.model.fast_ops)",
        description="Time one DABNet training step (forward + class-weighted CE + backward + Adam, "
        "synthetic images) built from the stock ops and from the fast ops, interleaved "
        "in rounds in the same run, and print the ratio against the 1.3x target.",
    )
    p.add_argument("--input-size", type=_profiling_hw, default=(180, 240), metavar="H,W", help="default 180,240")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--amp", choices=("off", "bf16"), default="off", help="off = fp32 (default), bf16 = CPU autocast")
    p.add_argument("--channels-last", action="store_true", help="model and images in channels_last")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--iters", type=int, default=3, help="timed steps per model and round (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default 2)")
    p.add_argument(
        "--no-bn-prelu",
        dest="bn_prelu",
        action="store_false",
        help="fast ops without the fused BN+PReLU (the recipe field fused_bn_prelu; on in the cpu profile)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_bench_ops(args: argparse.Namespace) -> int:
    import json

    from .deploy.bench_ops import bench_fast_ops, format_bench_ops

    if args.amp == "bf16":
        import torch

        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise DabnetError("--amp bf16: this CPU has no bf16 units (oneDNN reports no bf16 support): use --amp off")
    result = bench_fast_ops(
        args.input_size,
        args.batch,
        args.threads,
        args.amp,
        args.channels_last,
        args.rounds,
        args.iters,
        args.warmup,
        bn_prelu=args.bn_prelu,
    )
    print(json.dumps(result) if args.json else format_bench_ops(result))
    return 0


_COMMANDS["fps"] = (_add_fps, _run_fps)
_COMMANDS["export"] = (_add_export, _run_export)
_COMMANDS["bench-ops"] = (_add_bench_ops, _run_bench_ops)


# ----------------------------------------------------------------- ablations (notebook 02's sweep)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, e.g. 0,1,2; got {text!r}") from None


def _add_ablations(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .training.recipes import DATASET_NAMES, PROFILES

    p = sub.add_parser(
        "ablations",
        help="DAB ablation sweep: (variant, seed) units, paired deltas with 95%% intervals",
        description="Train every (variant, seed) unit of the DAB ablation sweep that has no result file yet, one "
        "JSON file per unit (committed under reports/ablations/ for the cpu profile), then rebuild "
        "reports/ablations.{md,csv}, ablations_noise.{md,csv} and figures/ablations.png from all unit "
        "files. An interrupted sweep continues; --shard i/n splits it between processes or machines; "
        "--backend ray fans it out over a Ray instance.",
    )
    p.add_argument("--dataset", choices=DATASET_NAMES, default="camvid", help="dataset (default camvid)")
    p.add_argument("--profile", choices=PROFILES, default="cpu", help="recipe profile (default cpu)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default data/<dataset>)")
    p.add_argument(
        "--variants",
        default="all",
        help="comma-separated names from dabnet_lib.workbook.ablations.VARIANTS (default all)",
    )
    p.add_argument("--seeds", type=_int_list, default=None, help="seed list of every variant (default: the profile's)")
    p.add_argument("--iters", type=int, default=None, help="iterations per unit (default: the profile's budget)")
    p.add_argument(
        "--noise-study",
        action="store_true",
        help="also train the reference at the noise study's budgets and seeds (ablations.NOISE_*)",
    )
    p.add_argument("--shard", default=None, metavar="I/N", help="train only shard I of N (1 <= I <= N)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="local (default) or ray")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local instance)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per unit (default: all cores)")
    p.add_argument("--units-dir", default=None, metavar="DIR", help="unit result files (default <reports>/ablations)")
    p.add_argument(
        "--runs-dir", default=None, metavar="DIR", help="training runs (default runs/<profile>/<dataset>/ablations)"
    )
    p.add_argument(
        "--reports-dir", default=None, metavar="DIR", help="tables and figure (default: the profile's reports)"
    )
    p.add_argument("--table-only", action="store_true", help="train nothing: rebuild the reports from the unit files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_ablations(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .workbook.ablation_reports import rebuild_reports
    from .workbook.ablation_sweep import Sweep, plan, run_sweep
    from .workbook.ablation_units import parse_shard, shard_units
    from .workbook.runner import Layout

    if args.threads is not None and args.threads < 1:
        raise DabnetError(f"--threads {args.threads}: needs at least 1")
    shard = parse_shard(args.shard) if args.shard else None
    layout = Layout.for_profile(args.profile, args.dataset)
    reports = Path(args.reports_dir) if args.reports_dir else layout.reports
    sweep = Sweep(
        args.dataset,
        args.profile,
        Path(args.data_root) if args.data_root else default_data_root(args.dataset),
        Path(args.units_dir) if args.units_dir else reports / "ablations",
        Path(args.runs_dir) if args.runs_dir else layout.runs / "ablations",
        {"threads": args.threads} if args.threads else {},
    )
    names = "all" if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    units, budget = plan(sweep, names, args.seeds, args.iters, args.noise_study)
    if not args.table_only:
        todo = shard_units(units, *shard) if shard else units
        if shard:
            print(f"shard {shard[0]}/{shard[1]}: {len(todo)} of {len(units)} unit(s)")
        run_sweep(sweep, todo, args.backend, args.ray_address, quiet=args.quiet)
    command = (
        f"dabnet ablations --dataset {args.dataset} --profile {args.profile}"
        + (f" --iters {args.iters}" if args.iters else "")
        + (" --noise-study" if args.noise_study else "")
    )
    _tables, paths = rebuild_reports(sweep, units, budget, reports, command)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


_COMMANDS["ablations"] = (_add_ablations, _run_ablations)


# ----------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dabnet", description="DABNet workbook: train, test, predict, profile.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add, _run in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = _COMMANDS[args.command][1](args)
    except DabnetError as exc:
        print(f"dabnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dabnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
