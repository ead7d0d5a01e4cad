"""Recompute a run's retrieval metrics from its saved checkpoints.

    python eval/evaluate.py RUN_DIR [--checkpoint NAME] [--out DIR] [--image-pool all|task]

The same as ``factmas evaluate`` (see ``factmas.cli.evaluate`` for every option).
"""
import sys

from factmas.errors import guarded_main
from factmas.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(guarded_main("factmas evaluate", main, sys.argv[1:]))
