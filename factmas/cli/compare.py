"""``python eval/compare.py RUN_DIR [RUN_DIR ...] [--metric NAME] [--out PREFIX] [--allow-mixed]``:
runs (methods × seeds) in one table, mean ± std over seeds (the work is ``factmas.experiments.compare``).

Exit status: 0 printed (and written); 2 no runs, or runs that do not belong in one table.
"""
from __future__ import annotations

import argparse
import sys

from factmas.api.tools import compare as compare_runs
from factmas.cli.common import parse
from factmas.evaluation.metrics import HEADLINE
from factmas.experiments import compare
from factmas.errors import FactmasError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval/compare.py", description=compare.__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--metric", default=HEADLINE, choices=list(compare.METRIC_CHOICES))
    p.add_argument("--out", metavar="PREFIX", help="write PREFIX.md and PREFIX.csv")
    p.add_argument("--allow-mixed", action="store_true",
                   help="compare runs of different datasets, splits, image splits or unfinished runs")
    p.add_argument("--overwrite", action="store_true", help="replace PREFIX.md and PREFIX.csv if present")
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table; with --out PREFIX also write PREFIX.md and PREFIX.csv."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        table = compare_runs(args.runs, args.metric, args.allow_mixed, args.out or None, args.overwrite)
    except (ValueError, FactmasError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    print(table.markdown(), end="")
    if args.out:
        print(f"wrote {args.out}.md, {args.out}.csv")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas compare", main))
