"""Where things live: the repository, its data, reports and runs folders (one source for every default path).

Shared bottom layer: imports nothing from dabnet_lib. ``DEFAULT_DATA_DIR`` is relative to the working
directory (the CLI's ``--data-root`` default, ``data/<dataset>``); the notebook runner anchors the same
folders at :data:`REPO_ROOT` so that notebooks find them from any working directory.
"""

from __future__ import annotations

from pathlib import Path

#: The dabnet_lib package folder.
PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository checkout that holds dabnet_lib/, notebooks/, data/ and reports/.
REPO_ROOT = PACKAGE_DIR.parent
#: Datasets live in ``data/<dataset>`` (see data/README.md) unless a data root is given.
DEFAULT_DATA_DIR = Path("data")
#: Numbered notebooks, committed without outputs.
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: Below a repository root: what ``make run-all`` writes (tables, figures, executed notebooks), and the
#: workbook's training runs (git-ignored).
REPORTS = Path("reports")
RUNS = Path("runs")


def default_data_root(dataset: str) -> Path:
    """``data/<dataset>``, relative to the working directory."""
    return DEFAULT_DATA_DIR / dataset
