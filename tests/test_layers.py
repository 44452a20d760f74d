"""Imports point one way, down the data flow: shared -> data -> model -> training -> evaluation -> deploy ->
workbook -> cli. Every import of every dabnet_lib module counts, also one inside a function or under
TYPE_CHECKING; a module may import its own layer and the layers before it, never one after it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dabnet_lib

PACKAGE = Path(dabnet_lib.__file__).resolve().parent
#: Modules at the top of dabnet_lib below every sub-package (they import no sub-package).
SHARED = ("__init__", "errors", "atomic_files", "paths", "devices", "machine", "malloc_reuse")
#: Sub-packages in flow order, then the command line on top.
FLOW = ("data", "model", "training", "evaluation", "deploy", "workbook")
LAYERS = {"shared": 0, **{name: i + 1 for i, name in enumerate(FLOW)}, "cli": len(FLOW) + 1}


def layer_of(parts: tuple[str, ...]) -> str:
    """Layer name of the module ``dabnet_lib.<parts>`` (a sub-package, a module in one, or a top-level module)."""
    head = parts[0] if parts else "__init__"
    if head in FLOW:
        return head
    if head in SHARED:
        return "shared"
    if head == "cli":
        return "cli"
    raise AssertionError(f"dabnet_lib.{'.'.join(parts)} belongs to no layer: add it to a sub-package or to SHARED")


def imported(tree: ast.AST, package: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, parts)`` of every dabnet_lib module imported in ``tree``; ``package`` is where the importing
    module sits, as parts under dabnet_lib (``()`` for a top-level module)."""
    found: list[tuple[int, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = tuple(alias.name.split("."))
                if parts[0] == "dabnet_lib":
                    found.append((node.lineno, parts[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = node.level - 1
                assert up <= len(package), f"line {node.lineno}: relative import above dabnet_lib"
                base = package[: len(package) - up]
            elif node.module and node.module.split(".")[0] == "dabnet_lib":
                base = ()
            else:
                continue
            module = tuple(node.module.split(".")) if node.module else ()
            target = base + (module[1:] if not node.level else module)
            # the first part decides the layer; ``from . import x`` at the top names it in x
            found += [(node.lineno, target)] if target else [(node.lineno, (a.name,)) for a in node.names]
    return found


def upward_imports(path: Path, source: str) -> list[str]:
    """``"<file>:<line> (<layer>) imports dabnet_lib.<x> (<layer>)"`` for each import of a later layer."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    package = tuple(rel.parts[:-1])
    own = layer_of(package or (rel.parts[-1],))
    bad = []
    for line, parts in imported(ast.parse(source, str(path)), package):
        other = layer_of(parts)
        if LAYERS[other] > LAYERS[own]:
            bad.append(f"dabnet_lib/{rel}.py:{line} ({own}) imports dabnet_lib.{'.'.join(parts)} ({other})")
    return bad


def test_no_module_imports_a_later_layer() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40 and {p.parent.name for p in modules} >= set(FLOW)
    bad = [msg for p in modules for msg in upward_imports(p, p.read_text())]
    assert not bad, "imports against the flow (move the code down, or the import up):\n" + "\n".join(bad)


def test_every_kind_of_upward_import_is_caught() -> None:
    cases = {
        "training/engine.py": "from ..evaluation.evaluation import evaluate",
        "model/checkpoints.py": "def f():\n    from ..workbook import visualize\n",
        "data/datasets.py": "from dabnet_lib.model.dabnet import DABNet",
        "deploy/bench.py": "import dabnet_lib.workbook.reports",
        "devices.py": "from .data.datasets import CAMVID",
        "errors.py": "from . import cli",
        "evaluation/inference.py": "from .. import workbook",
        "workbook/runner.py": "from ..cli import main",
    }
    for where, source in cases.items():
        found = upward_imports(PACKAGE / where, source)
        assert len(found) == 1 and found[0].startswith(f"dabnet_lib/{where}:"), (where, found)
    allowed = {
        "workbook/runner.py": "from ..training.engine import fit\nfrom .. import errors\nfrom . import ablations",
        "evaluation/inference.py": "from ..training import validation\nfrom dabnet_lib.data.colors import colorize",
        "cli.py": "from .workbook.runner import Layout",
        "data/statistics.py": "from .datasets import SegmentationDataset",
    }
    for where, source in allowed.items():
        assert upward_imports(PACKAGE / where, source) == [], where


def test_a_module_outside_the_layers_is_named() -> None:
    with pytest.raises(AssertionError, match=r"dabnet_lib\.stray belongs to no layer"):
        upward_imports(PACKAGE / "stray.py", "")
