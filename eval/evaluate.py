"""Recompute a run's retrieval metrics from its saved checkpoints.

    python eval/evaluate.py RUN_DIR [--checkpoint NAME] [--out DIR] [--image-pool all|task]

The same as ``factmas evaluate`` (see ``factmas.evaluate_cli`` for every option).
"""
import sys

from factmas.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
