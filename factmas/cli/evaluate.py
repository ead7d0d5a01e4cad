"""``factmas evaluate``: recompute the retrieval metrics of a run from its saved checkpoints.

Usage::

    factmas evaluate RUN_DIR [--checkpoint NAME] [--out DIR] [--stages 0,1,...] [--json]
                     [--data FILE.h5] [--image-pool all|task] [--image-split test|val]
                     [--device auto|cpu|cuda] [--overwrite] [--replace-results]

Without ``--checkpoint``: the initial model, rebuilt exactly as the trainer builds it
(``torch.manual_seed(train.seed)`` then ``build_model``), and every stage checkpoint ``task{s}.pt``
in order are evaluated, and the report (results.json, results.md, plots) is written to ``--out``,
by default ``RUN_DIR/evaluations/<image split>`` (``…/test``, ``…/val``, ``…/test-task-pool``), never
over the run's own results: ``--out RUN_DIR`` needs ``--replace-results`` (and the run's lock), an
``--out`` that already holds results needs ``--overwrite``. A run whose stage checkpoints are not
all there (a gap, or an unfinished run) is refused unless ``--stages`` names the stages to evaluate,
so that "final" is never silently an earlier stage. results.json records the image split and pool,
the stages and checkpoints evaluated, whether they cover the whole sequence (``complete``) and the
run's data fingerprint. With ``--checkpoint NAME`` (e.g. ``last.pt``, ``task2``): only that
checkpoint, printed as a table (``--json``: the metrics dict); nothing is written.
The evaluation settings are the run's ``eval`` config unless overridden. Exit status 0, or 2 when
the run, a checkpoint, the dataset or an option cannot be used (nothing is written then).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from factmas.cli.common import parse
from factmas.errors import FactmasError
from factmas.run.load import RunLoadError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas evaluate",
                                description="Recompute retrieval metrics from a run's checkpoints.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--checkpoint", help="evaluate only this checkpoint (e.g. last.pt, task2)")
    p.add_argument("--out", help="where the report goes (default RUN_DIR/evaluations/<image split>)")
    p.add_argument("--stages", help="evaluate only these stages, e.g. 0,1 (needed when the run lacks "
                                    "some stage checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--replace-results", action="store_true",
                   help="allow --out RUN_DIR: replace the run's own results.json/results.md/plots")
    p.add_argument("--json", action="store_true", help="with --checkpoint: print the metrics as JSON")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--other-data", action="store_true",
                   help="evaluate on a dataset other than the run's on purpose (refused otherwise); "
                        "its fingerprint is recorded in the evaluation's results.json")
    p.add_argument("--image-pool", choices=["all", "task"], help="override eval.image_pool")
    p.add_argument("--image-split", choices=["test", "val"], help="override eval.image_split")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas evaluate``; returns the exit status."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if args.json and not args.checkpoint:            # was silently ignored (issue 30)
        print("factmas evaluate: error: --json prints one checkpoint's metrics and needs --checkpoint; "
              "an evaluation of every stage writes results.json in --out", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from factmas.api.evaluate import evaluate_into
    from factmas.api.run import load_run
    from factmas.run.checkpoint import CheckpointError
    from factmas.run.rundir import RunDirError
    try:
        if args.checkpoint:
            one = load_run(args.run, data=args.data, device=args.device).evaluate_checkpoint(
                args.checkpoint, image_split=args.image_split, image_pool=args.image_pool,
                progress=not args.quiet, other_data=args.other_data)
            print(json.dumps(one.metrics, indent=2, default=str) if args.json
                  else f"{one.checkpoint}\n\n" + one.markdown())
            return 0
        out, paths = evaluate_into(args.run, args.out, data=args.data, image_split=args.image_split,
                                   image_pool=args.image_pool, stages=args.stages, device=args.device,
                                   progress=not args.quiet, other_data=args.other_data,
                                   overwrite=args.overwrite, replace_results=args.replace_results)
    except (RunLoadError, CheckpointError, RunDirError, ValueError, FactmasError) as e:
        print(f"factmas evaluate: error: {e}", file=sys.stderr)
        return 2
    print((out / "results.md").read_text(encoding="utf-8") if (out / "results.md").is_file() else "")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas evaluate", main))
