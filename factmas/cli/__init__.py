"""The ``factmas`` command: ``factmas train | query | evaluate ...``.

Each subcommand lives in its own module with a ``main(argv) -> int`` function; this file only
dispatches (a plain dict, no import magic).

The folder holds every command line of factmas, thin: parse, call one library function, report
(messages and exit statuses). The work is done by the public API (``factmas.api``: train, load_run,
Run.evaluate/query/search, evaluate_into, compare, make_gallery, build_feature_cache) and library
modules (``factmas.trainer``, ``factmas.explore``, ``factmas.evaluation``, ``factmas.experiments``:
``paper_settings``, ``paper_run``, ``lambda_search``; ``factmas.run``), which never import from here
and never take an argparse Namespace: a command converts its options to typed parameters
(``tests/cli/test_subcommands.py``). A command module never imports another command module. Every
error a user can cause
(``factmas.errors.FactmasError``, a full disk, a read-only folder, the file-size limit, a dead peer
process under torchrun) that a command did not report itself is caught once, in ``main`` below, and
printed as one line (exit 2, or 1 for a training error or a dead peer).
"""
from __future__ import annotations

import importlib
import os
import sys

from factmas.machine.cpu_memory import keep_freed_memory
from factmas.errors import guarded_main

SUBCOMMANDS = {
    "train": ("factmas.cli.train", "train the tasks of a split in order (finetune, MAS, ...)"),
    "query": ("factmas.cli.query", "top-k facts for images, from a trained run"),
    "search": ("factmas.cli.search", "the images that fit a fact best (fact -> images), from a run"),
    "gallery": ("factmas.cli.gallery", "a static HTML page comparing what runs retrieve"),
    "evaluate": ("factmas.cli.evaluate", "recompute retrieval metrics from a run's checkpoints"),
    "features": ("factmas.cli.features", "compute a pretrained backbone's feature cache on a dataset"),
    "calibrate": ("factmas.cli.calibrate", "fit a run's answer probabilities and threshold on val"),
    "compare": ("factmas.cli.compare", "runs (methods x seeds) in one table, mean +- std over seeds"),
    "paper": ("factmas.cli.paper", "the MAS paper's facts comparison: lambda search, runs, tables"),
}

# modules of this folder that are not commands: the dispatcher, shared parsing, train's quick parser
NOT_COMMANDS = ("__init__", "__main__", "common", "train_args")


# subcommands whose module loads torch: their parser lives in a torch-free module for a quick --help
QUICK_HELP = {"train": "factmas.cli.train_args"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``factmas`` console script; returns the exit status (its own usage text
    goes through ``guarded_main`` too, so ``factmas | head`` ends quietly)."""
    return guarded_main("factmas", _dispatch, argv)


def _dispatch(argv: list[str] | None) -> int:
    """Choose the subcommand of ``argv`` and run it (under its own ``guarded_main``)."""
    # Idle OpenMP threads sleep instead of spinning, so numpy's sorts in the rank-based evaluation get
    # the cores (10k x 100k evaluation at 2 threads on a loaded machine: 40 s spinning, 11 s passive;
    # bench/eval_exact.py). Read when torch loads, i.e. after this line; the user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Freed tensor memory stays in the process instead of going back to the kernel page by page
    # (2.2-2.8x the images/s of the 224-px feature cache; factmas/machine/cpu_memory.py).
    keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<9} {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
        print("usage: factmas {" + ",".join(SUBCOMMANDS) + "} ...\n\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nfactmas: unknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    if argv[0] in QUICK_HELP and any(a in ("-h", "--help") for a in argv[1:]):
        importlib.import_module(QUICK_HELP[argv[0]]).build_parser().print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return guarded_main(f"factmas {argv[0]}", module.main, argv[1:])   # the one catch (factmas.errors)


if __name__ == "__main__":
    sys.exit(main())
