"""What every command line does the same way: parse its arguments into a namespace or an exit status,
and refuse counts below 1 naming the option.

May import: the standard library only.
"""
from __future__ import annotations

import argparse
import sys


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """``parser.parse_args(argv)`` (``sys.argv[1:]`` when None), or the exit status argparse chose:
    0 after ``--help``, 2 after a usage error (its message already printed)."""
    try:
        return parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0)


def at_least_one(prog: str, args: argparse.Namespace, *names: str) -> int:
    """0 when every option ``names`` (attribute names) of ``args`` is >= 1; else print
    "PROG: error: --OPTION must be >= 1, got V" for the first that is not and return 2."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            print(f"{prog}: error: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2
    return 0
