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

from factmas.cli.common import parse
import time
from pathlib import Path

from factmas.config import ConfigError, RunConfig, TrainConfig
from factmas.errors import FactmasError
from factmas.io import git_commit
from factmas.experiments import paper_run
from factmas.experiments.paper_table import (GRIDS, MAX_EXTENSIONS, QUICK_GRIDS, QUICK_VARIANTS,  # noqa: F401
                                             VARIANT, VARIANTS, Settings, check_splits, choose_lambdas,
                                             claim_out, cpu_seconds, extend_grids, final_jobs, run_all,
                                             search_jobs, share_zero)

log = logging.getLogger("factmas.experiments.paper_table")

# The trainer's default epochs per task (train.epochs), so that the table is run on the default model.
DEFAULT_EPOCHS = TrainConfig().epochs
# The λ search trains as long as the final runs (--search-epochs defaults to --epochs): on Flickr8k a
# 2-epoch search ranked MAS's λ opposite to 4-epoch training (val 3.36/3.64/3.69% for λ = 1/10/100,
# test 3.45/2.96/2.90% at 4 epochs), so a shorter search is not a proxy for the runs it tunes.
QUICK_FRACTION, QUICK_MIN_IMAGES = 0.1, 2000


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


def settings_from_args(args: argparse.Namespace, num_images: int,
                       splits: list[str] | None = None) -> Settings:
    """Resolve the options (``--quick`` defaults first, explicit options win); ``splits``: the
    dataset's split names (for the default of ``--disjoint-seeds``). Raises ValueError."""
    q = args.quick
    variants = (args.methods.split(",") if args.methods else
                list(QUICK_VARIANTS) if q else [v.label for v in VARIANTS])
    bad = [v for v in variants if v not in VARIANT]
    if bad:
        raise ValueError(f"--methods: unknown {bad}; valid: {[v.label for v in VARIANTS]}")
    stray = [v for v in args.one_run if v not in variants]
    if stray:
        raise ValueError(f"--one-run: {stray} not among --methods {variants}")
    seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    if not seeds:
        raise ValueError("--seeds: at least one seed")
    # `is None`, not `or`: an explicit 0 is refused below, never taken for "not given" (issue 30)
    epochs = args.epochs if args.epochs is not None else (1 if q else DEFAULT_EPOCHS)
    search_epochs = args.search_epochs if args.search_epochs is not None else epochs
    if epochs < 1 or search_epochs < 1 or args.jobs < 1:
        raise ValueError(f"--epochs, --search-epochs and --jobs must be >= 1, got {epochs}, "
                         f"{search_epochs} and {args.jobs}")
    grids = dict(QUICK_GRIDS if q else GRIDS)
    grids.update(dict(args.grid))
    fraction = (args.image_fraction if args.image_fraction is not None
                else QUICK_FRACTION if q and num_images > QUICK_MIN_IMAGES else 1.0)
    if not 0 < fraction <= 1:
        raise ValueError(f"--image-fraction must be in (0, 1], got {fraction}")
    base = RunConfig.from_json(args.config).to_dict() if args.config else RunConfig().to_dict()
    base.pop("data"), base.pop("out")
    s = Settings(data=str(Path(args.data).resolve()), out=str(Path(args.out).resolve()),
                 variants=variants, seeds=seeds,
                 semantic_seeds=(args.semantic_seeds if args.semantic_seeds is not None
                                 else seeds[:1]),
                 epochs=epochs, search_epochs=search_epochs, grids=grids, jobs=args.jobs,
                 random_prefix=args.random_prefix, semantic_split=args.semantic_split,
                 disjoint_seeds=_disjoint_seeds(args, seeds, splits),
                 disjoint_prefix=args.disjoint_prefix,
                 image_fraction=fraction, base=base, one_run=list(args.one_run))
    missing = [m for m in s.searches() if m not in grids]
    if missing:
        raise ValueError(f"no λ grid for {missing}; give --grid {missing[0]}=...")
    return s


def _disjoint_seeds(args: argparse.Namespace, seeds: list[int], splits: list[str] | None) -> list[int]:
    if args.disjoint_seeds is not None:
        return args.disjoint_seeds
    name = f"{args.disjoint_prefix}_seed{seeds[0]}"
    if splits is None or name in splits:
        return seeds[:1]
    log.warning("the dataset has no image-disjoint split %s (files built before it): the table is "
                "made without it; rebuild the file with data_prep to add it", name)
    return []


def bracketed_search(settings: Settings, search: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """``factmas.experiments.paper_run.bracketed_search`` with this module's ``run_all``."""
    return paper_run.bracketed_search(settings, search, _run_all)


def _run_all(jobs: list[dict], settings: Settings) -> list[dict]:
    return run_all(jobs, settings)          # looked up at call time (tests replace run_all)


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
    from factmas.data.dataset import DatasetError, read_dataset
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)      # one line per run, not per epoch
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    try:
        data = read_dataset(args.data, load_images=False)
        settings = settings_from_args(args, len(data.image_split), sorted(data.splits))
        check_splits(settings, sorted(data.splits))
        claim_out(settings.out)
    except (ValueError, ConfigError, DatasetError, FactmasError) as e:
        print(f"paper_table: error: {e}", file=sys.stderr)
        return 2
    try:
        runs = paper_run.train_paper_runs(settings, _run_all)
    except Exception as e:                                    # a run failed: say which, exit 1
        log.exception("paper_table: a run failed")
        print(f"paper_table: run failed: {e}", file=sys.stderr)
        return 1
    for p in paper_run.write_paper_table(settings, runs, "python eval/paper_table.py " + shlex.join(argv),
                                         git_commit(), args.quick, time.perf_counter() - t0):
        print(f"wrote {p}")
    print((Path(settings.out) / "paper_table.md").read_text(encoding="utf-8"))
    return 0
