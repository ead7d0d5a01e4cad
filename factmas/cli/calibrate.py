"""``factmas calibrate``: fit a trained run's confidence (P(fact true | distance) and the threshold p*).

Usage::

    factmas calibrate --run RUN_DIR [--checkpoint last.pt] [--k 5] [--target-precision 0.5]
                      [--out FILE] [--data FILE.h5] [--device auto|cpu|cuda]

Embeds the **val** images of the run's dataset, takes the top-k facts of each (k = ``--k``, default
the run's ``eval.calibration_k``), fits P(fact true | D) by isotonic regression, and chooses the
abstention threshold p*: the smallest p at which the val answers with p ≥ p* reach
``--target-precision`` (default the run's ``eval.calibration_precision``). Writes RUN_DIR/calibration.json
atomically (or ``--out FILE``; ``factmas query --calibration FILE`` reads it). Training writes the same
file after the last task; this command is for runs trained before that, or for another checkpoint.

Exit status: 0 written; 2 the run, checkpoint or dataset cannot be used, the dataset has no val
images, a bad option, or the run is held by another process.
"""
from __future__ import annotations

import argparse
import logging
import sys

from factmas.cli.common import at_least_one, parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas calibrate",
                                description="Fit P(fact true | distance) and the abstention threshold "
                                            "of a trained run on its val images.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory of factmas train")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint in RUN_DIR/checkpoints")
    p.add_argument("--k", type=int, help="top facts of each val image fitted on "
                   "(default: the run's eval.calibration_k, 5)")
    p.add_argument("--target-precision", type=float, help="precision the shown val answers must reach "
                   "(default: the run's eval.calibration_precision, 0.5)")
    p.add_argument("--out", metavar="FILE", help="write here instead of RUN_DIR/calibration.json")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas calibrate``; returns the exit status (module docstring)."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.k is not None and at_least_one("factmas calibrate", args, "k"):
        return 2
    t = args.target_precision
    if t is not None and not 0 < t <= 1:
        print(f"factmas calibrate: error: --target-precision must be in (0, 1], got {t}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    from factmas.api.run import load_run
    from factmas.explore.calibrate import describe
    from factmas.evaluation.calibration import CalibrationError
    from factmas.run.load import RunLoadError
    from factmas.run.rundir import RunDirError
    try:
        run = load_run(args.run, data=args.data, checkpoint=args.checkpoint, device=args.device)
        path, cal = run.calibrate(args.k, t, args.out)
    except (RunLoadError, RunDirError, CalibrationError, ImportError, ValueError, OSError) as e:
        print(f"factmas calibrate: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {describe(cal)}")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas calibrate", main))
