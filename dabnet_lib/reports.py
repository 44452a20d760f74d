"""Writing report tables: every table carries its provenance (profile, budget, hardware, date, commit).

A table is written twice, as ``<stem>.csv`` (data only) and ``<stem>.md`` (a provenance block, then the
table as Markdown, then optional notes), both atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .checkpoints import write_bytes_atomic
from .machine import cpu_name

REPO_ROOT = Path(__file__).resolve().parents[1]


def hardware_summary(device: str | torch.device | None = None) -> str:
    """One line naming the hardware a number was measured on, e.g. ``2x Intel Xeon ... (2 threads), torch 2.13.0``."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
        return f"{gpu} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return f"{os.cpu_count()}-core {cpu_name()} ({torch.get_num_threads()} threads), torch {torch.__version__}"


def git_commit(short: bool = True) -> str:
    """The repository's HEAD commit (``+dirty`` when the working tree has changes), or ``unknown``."""
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        rev = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(profile: str, budget: str, command: str, device: str | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, str]:
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


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, text.encode("utf-8"))


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A pipe table (GitHub Markdown) of ``df``; NaN shown as an em dash."""
    shown = df.astype(object).where(pd.notna(df), None)
    return shown.to_markdown(index=False, floatfmt=floatfmt, missingval="—")


def write_table(df: pd.DataFrame, stem: str | Path, meta: Mapping[str, str], title: str,
                notes: Sequence[str] = (), floatfmt: str = ".2f") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (title, provenance, table, notes); returns both paths."""
    stem = Path(stem)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    _atomic_write_text(csv_path, df.to_csv(index=False))
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {'`' + value + '`' if key == 'command' else value}" for key, value in meta.items()]
    lines += ["", to_markdown(df, floatfmt), ""]
    if notes:
        lines += [f"- {note}" for note in notes] + [""]
    _atomic_write_text(md_path, "\n".join(lines))
    return csv_path, md_path
