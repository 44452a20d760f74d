"""Writing report tables: every table carries its provenance (profile, budget, hardware, date, commit).

A table is written twice, as ``<stem>.csv`` (every column) and ``<stem>.md`` (a provenance block, then
the table as Markdown, then optional notes), both atomically. A report with a :class:`TableView`
(:data:`VIEWS`, by file name) shows only the columns a reader needs in its ``.md``; the facts shared
by its rows (device, threads, torch, load) move to the header list. :func:`rerender_markdown` rebuilds
a ``.md`` from its ``.csv`` and its own header (no re-run).
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..atomic_files import write_text_atomic
from ..machine import cpu_label
from ..paths import REPO_ROOT


def hardware_summary(device: str | torch.device | None = None) -> str:
    """One line naming the hardware a number was measured on, e.g. ``2x Intel Xeon ... (2 threads), torch 2.13.0``."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
        return f"{gpu} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{os.cpu_count()}-core {cpu_label()} ({torch.get_num_threads()} threads), torch {torch.__version__}"


def git_commit(short: bool = True) -> str:
    """The repository's HEAD commit (``+dirty`` when the working tree has changes), or ``unknown``."""
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        rev = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(
    profile: str, budget: str, command: str, device: str | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The provenance block every report table carries."""
    meta = {
        "profile": profile,
        "budget": budget,
        "hardware": hardware_summary(device),
        "date": _dt.date.today().isoformat(),
        "commit": git_commit(),
        "command": command,
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A pipe table (GitHub Markdown) of ``df``; NaN shown as an em dash."""
    shown = df.astype(object).where(pd.notna(df), None)
    return shown.to_markdown(index=False, floatfmt=floatfmt, missingval="—")


@dataclass(frozen=True)
class TableView:
    """What a report's ``.md`` shows (its ``.csv`` keeps every column).

    columns: the table's columns, in order. facts: hidden columns summarised in the header list
    (their one value, or ``min–max`` when numbers vary). problems: a hidden column whose non-empty
    values become notes (e.g. a variant's error), so a failure is not hidden with its column.
    """

    columns: tuple[str, ...]
    facts: tuple[str, ...] = ()
    problems: str | None = None


#: Markdown views of the workbook's reports, by file name (``reports/<name>.md``).
VIEWS: dict[str, TableView] = {
    "fps": TableView(
        ("input", "batch", "variant", "ms", "fps", "speedup", "parity"),
        facts=("device", "threads", "torch", "load_avg_start", "load_avg_end"),
        problems="error",
    ),
    "ablations": TableView(
        ("variant", "change", "seeds", "val_miou", "delta", "ci_low", "ci_high", "verdict", "params", "cpu_ms_360x480")
    ),
}
MAX_MARKDOWN_COLUMNS = 10  # a test holds every committed report .md to this
_SHOWN_KEY = "table"  # header key naming how many columns the .md shows


def _fact(values: pd.Series) -> str | None:
    """One header value for a hidden column: its value when all rows agree, ``min–max`` for numbers."""
    values = values.dropna()
    if values.empty:
        return None
    if values.nunique() == 1:
        value = values.iloc[0]
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if pd.api.types.is_numeric_dtype(values):
        return f"{values.min():.4g}–{values.max():.4g}"
    return "varies by row (see the .csv)"


def _view(df: pd.DataFrame, view: TableView | None, csv_name: str) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """The shown frame, the derived header entries and the problem notes of ``df`` under ``view``."""
    if view is None:
        return df, {}, []
    shown = [c for c in view.columns if c in df.columns]
    header = {c: v for c in view.facts if c in df.columns and (v := _fact(df[c])) is not None}
    if len(shown) < len(df.columns):
        header[_SHOWN_KEY] = f"{len(shown)} of {len(df.columns)} columns; every column in `{csv_name}`"
    problems = []
    column = view.problems
    if column is not None and column in df.columns:
        for _, row in df[df[column].notna() & (df[column].astype(str).str.strip() != "")].iterrows():
            where = ", ".join(str(row[c]) for c in shown[:3])
            problems.append(f"{column}: {where}: {row[column]}")
    return df[shown], header, problems


def _markdown(
    df: pd.DataFrame,
    stem: Path,
    meta: Mapping[str, str],
    title: str,
    notes: Sequence[str],
    floatfmt: str,
    view: TableView | None,
) -> str:
    shown, header, problems = _view(df, view, stem.with_suffix(".csv").name)
    lines = [f"# {title}", ""]
    lines += [
        f"- **{key}**: {'`' + value + '`' if key == 'command' else value}" for key, value in {**meta, **header}.items()
    ]
    lines += ["", to_markdown(shown, floatfmt), ""]
    if notes or problems:
        lines += [f"- {note}" for note in [*notes, *problems]] + [""]
    return "\n".join(lines)


def write_table(
    df: pd.DataFrame,
    stem: str | Path,
    meta: Mapping[str, str],
    title: str,
    notes: Sequence[str] = (),
    floatfmt: str = ".2f",
    view: TableView | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (every column) and ``<stem>.md`` (title, provenance, the table under ``view``
    -- default ``VIEWS[stem name]``, else every column -- and notes); returns both paths."""
    stem = Path(stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text_atomic(csv_path, df.to_csv(index=False))
    write_text_atomic(md_path, _markdown(df, stem, meta, title, notes, floatfmt, view or VIEWS.get(stem.name)))
    return csv_path, md_path


def read_markdown_header(md_path: Path, view: TableView | None = None) -> tuple[str, dict[str, str], list[str]]:
    """``(title, meta, notes)`` of a report written by :func:`write_table`, without what ``view`` derives
    (its facts, the shown-columns line, its problem notes)."""
    lines = Path(md_path).read_text(encoding="utf-8").splitlines()
    title = lines[0].removeprefix("# ").strip()
    derived = set(view.facts if view else ()) | {_SHOWN_KEY}
    meta: dict[str, str] = {}
    notes: list[str] = []
    table_seen = False
    for line in lines[1:]:
        if line.startswith("|"):
            table_seen = True
        elif line.startswith("- ") and not table_seen:
            key, _, value = line[2:].partition(": ")
            key = key.strip("*")
            if key not in derived:
                meta[key] = value.strip("`") if key == "command" else value
        elif line.startswith("- ") and table_seen:
            note = line[2:]
            if not (view and view.problems and note.startswith(f"{view.problems}: ")):
                notes.append(note)
    return title, meta, notes


def rerender_markdown(stem: str | Path, floatfmt: str = ".2f") -> Path:
    """Rebuild ``<stem>.md`` from ``<stem>.csv`` and the ``.md``'s own title, provenance and notes under
    the report's current view (after a view changes; nothing is re-measured). Returns the ``.md`` path."""
    stem = Path(stem)
    view = VIEWS.get(stem.name)
    title, meta, notes = read_markdown_header(stem.with_suffix(".md"), view)
    df = pd.read_csv(stem.with_suffix(".csv"))
    md_path = stem.with_suffix(".md")
    write_text_atomic(md_path, _markdown(df, stem, meta, title, notes, floatfmt, view))
    return md_path
