"""Runs (methods × seeds) in one table, mean ± std over seeds, as Markdown and CSV.

    python eval/compare.py RUN_DIR [RUN_DIR ...] [--metric NAME] [--out PREFIX]

See ``factmas.experiments.compare`` for the grouping and the columns, ``factmas.cli.compare`` for
the options.
"""
import sys

from factmas.errors import guarded_main
from factmas.cli.compare import main

if __name__ == "__main__":
    sys.exit(guarded_main("compare", main, sys.argv[1:]))
