"""Running the numbered notebooks with papermill (what ``make run-all`` and ``make nb`` call).

``python -m dabnet_lib.workbook run 03_training --profile cpu --dataset camvid`` executes
notebooks/03_training.ipynb into ``<reports>/notebooks/03_training.ipynb``. Execution writes to
``*.partial.ipynb`` first; success renames it into place, failure keeps it as ``*.failed.ipynb``
(the partial output, for reading) and exits non-zero naming the notebook, so an executed copy
exists only for notebooks that completed and make's freshness check stays truthful.

Parameters are checked against the notebook's ``parameters`` cell before anything runs: an unknown
name, or a value whose type differs from the cell's default (or its annotation, e.g.
``variants = "all"  # type: str|list``), stops with one line naming it, the closest valid name and the
full list (exit 2). Executed copies get ``live=False`` where the notebook has that parameter (no
progress widgets or live figures in a saved copy; see :mod:`dabnet_lib.workbook.live_progress`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DabnetError
from ..paths import NOTEBOOK_DIR, REPO_ROOT, REPORTS, RUNS, default_data_root

NOTEBOOKS: tuple[str, ...] = (
    "01_data_exploration",
    "02_dab_ablations",
    "03_training",
    "04_evaluation",
    "05_qualitative_results",
    "06_fps_profiling",
)
KERNEL_NAME = "dabnet"


@dataclass(frozen=True)
class Layout:
    """Where a profile's outputs go: committed ``reports/`` only for the CamVid ``cpu`` profile."""

    reports: Path
    runs: Path

    @classmethod
    def for_profile(cls, profile: str, dataset: str, root: Path = REPO_ROOT) -> Layout:
        if profile == "smoke":
            return cls(root / RUNS / "smoke" / dataset / REPORTS, root / RUNS / "smoke" / dataset)
        if profile == "cpu" and dataset == "camvid":
            return cls(root / REPORTS, root / RUNS / "cpu" / dataset)
        return cls(root / REPORTS / f"{dataset}_{profile}", root / RUNS / profile / dataset)


TRAIN_SUBDIR = "train"  # notebook 03 trains into <run_dir>/train


def training_result(run_dir: str | Path) -> Path:
    """The checkpoint notebook 03 produced under ``run_dir`` (``summary.json``'s ``result``: best.pt
    when selected on held-out validation, else last.pt)."""
    import json

    from ..errors import DabnetError

    summary = Path(run_dir) / TRAIN_SUBDIR / "summary.json"
    if not summary.is_file():
        raise DabnetError(
            f"no finished training run in {summary.parent}: run notebook 03 first "
            f"(make nb N=03) or pass checkpoint=<path>"
        )
    return Path(json.loads(summary.read_text())["result"])


def training_budget(checkpoint: Mapping[str, Any]) -> str:
    """What a checkpoint was trained with, for the report's budget line, e.g.
    ``cpu profile: 50 epochs on trainval, batch 8, crop 180x240 -> 360x480; reached epoch 50, 2,900
    iterations; trained in 24.0 min on <CPU> (2 CPUs) as bf16 NCHW compiled`` (the wall time and
    hardware where the checkpoint records them)."""
    recipe = checkpoint.get("recipe") or {}
    if not recipe:
        return "unknown (checkpoint without a recipe, e.g. an official release file)"
    limit = f"{recipe['minutes']:g} min wall-clock" if recipe.get("minutes") else f"{recipe.get('epochs')} epochs"
    crop = "x".join(str(v) for v in recipe.get("crop_size", ()))
    if recipe.get("final_fraction") and recipe.get("final_crop_size"):
        crop += " -> " + "x".join(str(v) for v in recipe["final_crop_size"])
    text = (
        f"{recipe.get('profile')} profile: {limit} on {recipe.get('train_split')}, batch {recipe.get('batch_size')}, "
        f"crop {crop}; reached epoch {checkpoint.get('epoch')}, {checkpoint.get('iteration', 0):,} iterations"
    )
    if checkpoint.get("elapsed_s") is not None and checkpoint.get("hardware"):
        choice = (checkpoint.get("training_choice") or {}).get("label")
        text += f"; trained in {checkpoint['elapsed_s'] / 60:.1f} min on {checkpoint['hardware']}" + (
            f" as {choice}" if choice else ""
        )
    return text


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names it and the file holding its partial output."""


class ParameterError(DabnetError, ValueError):
    """A parameter the notebook does not declare, or a value of the wrong type (nothing was executed)."""


#: Python types by the names a default's type or an annotation uses.
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "str": (str,),
    "bool": (bool,),
    "list": (list, tuple),
    "tuple": (tuple, list),
    "dict": (dict,),
    "None": (type(None),),
}


def declared_parameters(name: str) -> dict[str, dict[str, Any]]:
    """The ``parameters`` cell of ``notebooks/<name>.ipynb`` (papermill's inspection: name ->
    ``{"default", "inferred_type_name", "help"}``)."""
    import papermill as pm

    return dict(pm.inspect_notebook(str(NOTEBOOK_DIR / f"{resolve(name)}.ipynb")))


def _allowed_types(spec: Mapping[str, Any]) -> tuple[str, tuple[type, ...]] | None:
    """``(type text, types)`` a parameter accepts: its annotation (``str | list``) or its default's
    type; None = any (default None, or a type this check does not know)."""
    import ast

    annotated = str(spec.get("inferred_type_name") or "None")
    if annotated != "None":
        names = [part.strip().strip("'\"") for part in annotated.split("|")]
    else:
        try:
            default = ast.literal_eval(str(spec.get("default")))
        except (ValueError, SyntaxError):
            return None
        names = [] if default is None else [type(default).__name__]
    if not names or not all(n in _TYPES for n in names):
        return None
    return " | ".join(names), tuple(t for n in names for t in _TYPES[n])


def check_parameters(
    name: str, parameters: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Raise :class:`ParameterError` (one line) for a parameter ``notebooks/<name>`` does not declare or
    a value of another type than its declaration shows (an int is accepted for a float)."""
    import difflib

    name = resolve(name)
    declared = declared_parameters(name) if declared is None else declared
    valid = ", ".join(declared)
    for key, value in parameters.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ParameterError(f"notebook {name} has no parameter {key!r}: {hint}valid: {valid}")
        allowed = _allowed_types(declared[key])
        if allowed is None:
            continue
        kind, types = allowed
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ParameterError(
                f"notebook {name}: parameter {key!r} takes {kind} (default "
                f"{declared[key].get('default')}), got {type(value).__name__} {value!r}; valid: {valid}"
            )


def resolve(name: str) -> str:
    """Accept ``03``, ``3``, ``03_training`` or ``03_training.ipynb``; return the full stem."""
    stem = Path(name).stem
    for nb in NOTEBOOKS:
        if stem == nb or stem.zfill(2) == nb[:2]:
            return nb
    raise ParameterError(f"unknown notebook {name!r}; known: {', '.join(NOTEBOOKS)}")


def notebook_parameters(
    name: str,
    profile: str,
    dataset: str,
    layout: Layout,
    data_root: str | None = None,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The documented parameters every notebook takes (plus its own knobs from ``extra``); run-all's 03
    publishes its result to :func:`published_checkpoint` and 04-06 evaluate that file once it exists."""
    params: dict[str, Any] = {
        "dataset": dataset,
        "data_root": data_root or str(REPO_ROOT / default_data_root(dataset)),
        "profile": profile,
        "run_dir": str(layout.runs),
        "reports_dir": str(layout.reports),
        "seed": seed,
    }
    published = published_checkpoint(layout, dataset, profile)
    stem = resolve(name)
    if stem == resolve("03"):
        params["publish_checkpoint"] = _repo_relative(published)
    elif stem in (resolve("04"), resolve("05"), resolve("06")) and published.is_file():
        params["checkpoint"] = _repo_relative(published)
    params.update(extra or {})
    return params


def published_checkpoint(layout: Layout, dataset: str, profile: str) -> Path:
    """Where run-all's notebook 03 publishes its result (weights only, a few MB) and what 04-06 then
    evaluate: ``<reports>/checkpoints/dabnet_<dataset>_<profile>.pt``."""
    return layout.reports / "checkpoints" / f"dabnet_{dataset}_{profile}.pt"


def _repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it (reports print a command that works from a clone)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _kernel_name() -> str:
    """The project's named kernel when registered (``make lab`` registers it), else python3."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
            return KERNEL_NAME
    except (ImportError, OSError, ValueError):  # jupyter_client missing or a broken kernelspec: the default kernel
        pass
    return "python3"


def run_notebook(name: str, parameters: Mapping[str, Any], out_dir: Path, progress: bool = True) -> Path:
    """Execute ``notebooks/<name>.ipynb`` with ``parameters`` into ``out_dir/<name>.ipynb`` (checked first:
    :func:`check_parameters`; ``live`` defaults to False in an executed copy)."""
    import papermill as pm

    name = resolve(name)
    declared = declared_parameters(name)
    check_parameters(name, parameters, declared)
    parameters = {**({"live": False} if "live" in declared else {}), **parameters}
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.ipynb"
    partial = out_dir / f"{name}.partial.ipynb"
    failed = out_dir / f"{name}.failed.ipynb"
    failed.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{name}.ipynb"),
            str(partial),
            parameters=dict(parameters),
            kernel_name=_kernel_name(),
            cwd=str(REPO_ROOT),
            progress_bar=progress,
            request_save_on_cell_execute=True,
        )
    except BaseException as exc:  # noqa: BLE001  (Ctrl-C too: keep the partial notebook, then one message)
        if partial.exists():
            os.replace(partial, failed)
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        elif isinstance(exc, pm.PapermillExecutionError) and exc.ename:  # the cell's exception
            reason = f"{exc.ename}: {exc.evalue}"
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise NotebookFailed(
            f"notebook {name} failed after {time.perf_counter() - start:.0f} s: {reason}\n"
            f"  partial output kept in {failed}"
        ) from None
    os.replace(partial, final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dabnet_lib.workbook", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute one notebook with papermill")
    run.add_argument("notebook", help="e.g. 03 or 03_training")
    where = sub.add_parser("where", help="print the reports or runs folder of a profile")
    where.add_argument("what", choices=("reports", "runs"))
    for p in (run, where):
        p.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "paper"))
        p.add_argument("--dataset", default="camvid", choices=("camvid", "cityscapes"))
    run.add_argument("--data-root", default=None)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--reports",
        default=None,
        metavar="DIR",
        help="reports folder (default: the profile's, see `where reports`); notebooks go to DIR/notebooks",
    )
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra notebook parameter (value parsed as Python literal when possible)",
    )
    run.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    layout = Layout.for_profile(args.profile, args.dataset)
    if getattr(args, "reports", None):
        layout = Layout(Path(args.reports).resolve(), layout.runs)
    if args.cmd == "where":
        print(os.path.relpath(getattr(layout, args.what), Path.cwd()))
        return 0
    try:
        extra = dict(_parse_param(p) for p in args.param)
        params = notebook_parameters(
            args.notebook, args.profile, args.dataset, layout, args.data_root, args.seed, extra
        )
        name = resolve(args.notebook)
        check_parameters(name, params)  # before anything runs or is printed
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"== {name} (profile={args.profile}, dataset={args.dataset}) -> {layout.reports / 'notebooks'}", flush=True)
    try:
        out = run_notebook(name, params, layout.reports / "notebooks", progress=not args.quiet)
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"== {name} done: {out}", flush=True)
    return 0


def _parse_param(text: str) -> tuple[str, Any]:
    import ast

    if "=" not in text:
        raise ParameterError(f"--param expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


if __name__ == "__main__":
    sys.exit(main())
