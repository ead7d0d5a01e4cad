"""Command line of ``python eval/paper_table.py`` (the MAS paper's facts comparison; see
``factmas.experiments.paper_table`` for what runs and how λ is chosen, ``factmas.experiments.paper_report`` for the outputs).

Usage::

    python eval/paper_table.py --data FILE.h5 [--out DIR] [--quick] [--seeds 0,1,2]
        [--semantic-seeds 0] [--disjoint-seeds 0] [--methods finetune,mas,...] [--epochs E]
        [--search-epochs E] [--jobs N] [--config RUNCONFIG.json] [--grid mas=0.1,1,10 ...]
        [--one-run ewc,si,...]

``--quick``: a smoke check in a few minutes: 1 epoch (search too), seed 0 only (random and
semantic), methods finetune, mas, joint, MAS's grid {0, 10}, and on data with more than 2,000 images
a random 10% of the images (``--image-fraction``). The image-disjoint split ``disjoint4_seed{s}`` runs
for each ``--disjoint-seeds`` seed (default: the first of --seeds when the file has that split —
files built before it have none, and the table is then made without it, saying so). Exit status: 0 done, 1 a run failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from factmas.cli.common import parse
from factmas.config import ConfigError
from factmas.errors import FactmasError
from factmas.experiments.paper_settings import DEFAULT_EPOCHS, plan_paper_table
from factmas.experiments.paper_table import GRIDS, VARIANTS, Settings
from factmas.io import git_commit

log = logging.getLogger("factmas.experiments.paper_table")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _grid(text: str) -> tuple[str, tuple[float, ...]]:
    name, _, values = text.partition("=")
    try:
        grid = tuple(float(v) for v in values.split(","))
    except ValueError:
        grid = ()
    if name not in GRIDS or not grid or any(v < 0 for v in grid):
        raise argparse.ArgumentTypeError(f"--grid: expected METHOD=λ1,λ2,... with METHOD in "
                                         f"{sorted(GRIDS)} and λ ≥ 0, got {text!r}")
    return name, grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval/paper_table.py", description=(
        "Run every continual-learning method on the random splits (seeds) and the semantic split, "
        "choose λ on validation images, and write the MAS paper's facts table."))
    p.add_argument("--data", required=True, help="HDF5 dataset with the random4_seed{s} and semantic4 splits")
    p.add_argument("--out", default="runs/paper_table", help="output folder (default runs/paper_table)")
    p.add_argument("--quick", action="store_true", help="smoke check (see the module docstring)")
    p.add_argument("--seeds", type=_ints, help="seeds of the random splits (default 0,1,2)")
    p.add_argument("--semantic-seeds", type=_ints,
                   help="seeds on the semantic split (default: the first of --seeds; '' for none)")
    p.add_argument("--disjoint-seeds", type=_ints,
                   help="seeds on the image-disjoint split disjoint4_seed{s} (default: the first of "
                        "--seeds when the file has it; '' for none)")
    p.add_argument("--methods", help=f"comma-separated subset of {[v.label for v in VARIANTS]}")
    p.add_argument("--one-run", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=[], metavar="METHODS",
                   help="comma-separated methods of --methods that run on the first random split and "
                        "seed only, like the ablation rows (their λ search is unchanged)")
    p.add_argument("--epochs", type=int, help=f"epochs per task (default {DEFAULT_EPOCHS})")
    p.add_argument("--search-epochs", type=int,
                   help="epochs per task in the λ search (default: --epochs)")
    p.add_argument("--grid", type=_grid, action="append", default=[], metavar="METHOD=L1,L2,..",
                   help="replace a method's λ grid")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, one torch thread each")
    p.add_argument("--image-fraction", type=float, help="use a random part of the images (smoke runs)")
    p.add_argument("--config", help="base RunConfig JSON (model, loss, train, eval settings)")
    p.add_argument("--random-prefix", default="random4", help="random splits are PREFIX_seed{s}")
    p.add_argument("--semantic-split", default="semantic4")
    p.add_argument("--disjoint-prefix", default="disjoint4", help="image-disjoint splits are PREFIX_seed{s}")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def options(args: argparse.Namespace) -> dict:
    """The parsed options as the keywords of ``factmas.experiments.paper_settings.resolve_settings``."""
    return dict(out=args.out, quick=args.quick, seeds=args.seeds, semantic_seeds=args.semantic_seeds,
                disjoint_seeds=args.disjoint_seeds,
                methods=args.methods.split(",") if args.methods else None, one_run=args.one_run,
                epochs=args.epochs, search_epochs=args.search_epochs, grids=dict(args.grid),
                jobs=args.jobs, image_fraction=args.image_fraction, config=args.config,
                random_prefix=args.random_prefix, semantic_split=args.semantic_split,
                disjoint_prefix=args.disjoint_prefix)


def settings_from_args(args: argparse.Namespace, num_images: int,
                       splits: list[str] | None = None) -> Settings:
    """``resolve_settings`` of the parsed options (``splits``: the dataset's split names, for the
    default of ``--disjoint-seeds``). Raises ValueError."""
    from factmas.experiments.paper_settings import resolve_settings
    return resolve_settings(args.data, num_images, splits, **options(args))


QUIET_LOGGERS = ("factmas.trainer", "factmas.evaluation.evaluator", "factmas.methods", "faiss")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit status. The per-epoch loggers are quiet meanwhile (one
    line per run) and get their levels back at the end, so a caller's logging is left as it was."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    from factmas.errors import sigterm_raises
    try:
        with sigterm_raises():          # SIGTERM between the phases too (λ search, final runs, report):
            return _main(argv)          # Terminated → exit 143, never a silent death by the signal
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _main(argv: list[str] | None) -> int:
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)      # one line per run, not per epoch
    t0 = time.perf_counter()
    from factmas.data.dataset import DatasetError
    from factmas.experiments import paper_run
    try:
        settings = plan_paper_table(args.data, **options(args))
    except (ValueError, ConfigError, DatasetError, FactmasError) as e:
        print(f"paper_table: error: {e}", file=sys.stderr)
        return 2
    try:
        runs = paper_run.train_paper_runs(settings)
    except Exception as e:                                    # a run failed: say which, exit 1
        log.exception("paper_table: a run failed")
        print(f"paper_table: run failed: {e}", file=sys.stderr)
        return 1
    for p in paper_run.write_paper_table(settings, runs, "python eval/paper_table.py " + shlex.join(argv),
                                         git_commit(), args.quick, time.perf_counter() - t0):
        print(f"wrote {p}")
    print((Path(settings.out) / "paper_table.md").read_text(encoding="utf-8"))
    return 0
