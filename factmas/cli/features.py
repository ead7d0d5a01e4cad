"""``factmas features``: compute (or find) the feature cache of a pretrained backbone's frozen stages.

Usage::

    factmas features --data FILE.h5 [--backbone efficientnet_lite0] [--freeze-stages 6]
                     [--config RUNCONFIG.json] [--threads N] [--device auto|cpu|cuda]

``factmas train`` builds the cache itself when it is missing; this command builds it once ahead of
several runs started side by side (the main job does), with all cores. It prints the cache file.
An interrupted or killed build leaves ``<cache>.npy.partial`` and its sidecar; the next build (this
command or a run) resumes from the last complete chunk (``factmas.model.feature_file``).
Exit status: 0 done, 2 usage error (bad data file, configuration or weights), 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys

from factmas.cli.common import parse
from factmas.config import ConfigError, freeze_stages_help
from factmas.data.dataset import DatasetError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas features",
                                description="Compute the feature cache of a pretrained backbone's frozen "
                                            "stages on a dataset (reused by every run on it).")
    p.add_argument("--data", required=True, help="HDF5 dataset")
    p.add_argument("--backbone", help="default: the configuration's (efficientnet_lite0)")
    p.add_argument("--freeze-stages", type=int,
                   help=f"frozen stages (default and range per backbone: {freeze_stages_help()})")
    p.add_argument("--config", help="a RunConfig JSON file (its model section is used)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (a bar on a terminal; in a log a line with rate and time left every 30 s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas features``; returns the exit status."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from factmas.api.tools import build_feature_cache
    from factmas.machine.device import UsageError
    try:
        path = build_feature_cache(args.data, args.config, args.backbone, args.freeze_stages,
                                   args.threads, args.device, progress=not args.no_progress)
    except (ConfigError, DatasetError, UsageError, ValueError, OSError) as e:
        print(f"factmas features: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("factmas features: interrupted; the cache file is not finished (the next build resumes "
              "from its last complete chunk)", file=sys.stderr)
        return 130
    print(path)
    return 0
