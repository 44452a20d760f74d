"""The ``dabnet`` command line (also ``python -m dabnet_lib.cli``).

Each sub-command has a ``_add_<name>(subparsers)`` that declares its flags and a ``_run_<name>(args)``
that calls into the library. Errors derived from :class:`dabnet_lib.errors.DabnetError` print one
line and exit with status 2; nothing here holds logic a test cannot reach through the library.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .errors import DabnetError

Runner = Callable[[argparse.Namespace], int | None]
Adder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

# name -> (function adding the sub-parser, function running it); filled by the sections below.
_COMMANDS: dict[str, tuple[Adder, Runner]] = {}


# ----------------------------------------------------------------- train / test / predict / stats
# (engine section: owned by the engine work)


# ----------------------------------------------------------------- fps / export
# (profiling section: owned by the profiling work)


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
