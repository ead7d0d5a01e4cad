"""``factmas gallery``: a static HTML page showing what trained runs retrieve, side by side.

Usage::

    factmas gallery RUN [RUN ...] --out DIR [--photos 8] [--facts-per-task 3] [--top-images 5]
                    [--seed 0] [--data FILE.h5] [--device auto]

Writes ``DIR/index.html`` (no server, no internet: plain HTML + CSS), ``DIR/img/*.jpg`` (the shown
dataset images as small JPEG files) and ``DIR/r_heatmaps.png`` / ``DIR/map_per_task.png``
(``factmas.explore.gallery_plots``: every run on one colour scale / one axis). The page has

(a) ``--photos`` sample test photos (seeded), with each run's top-5 facts (image → fact, FAISS wildcard
    distance), each marked ✓ (a true fact of the photo in the dataset) or ✗;
(b) for every task of the runs' split, ``--facts-per-task`` sample facts with test images, each run's
    top ``--top-images`` test images (fact → image), marked ✓/✗ the same way;
(c) the two comparison plots.

All runs must be trained on the same dataset (vocabulary and facts). Every file is written
atomically; ``index.html`` last. Exit status: 0 written; 2 a run, the dataset or ``--out`` unusable.
"""
from __future__ import annotations

import argparse
import logging
import sys

from factmas.cli.common import at_least_one, parse
from factmas.explore.gallery import GalleryError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas gallery",
                                description="A static HTML page comparing what runs retrieve.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories of factmas train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (index.html, img/, PNGs)")
    p.add_argument("--photos", type=int, default=8, help="sample test photos, top-5 facts each (default 8)")
    p.add_argument("--facts-per-task", type=int, default=3, help="sample facts per task (default 3)")
    p.add_argument("--top-images", type=int, default=5, help="images shown per fact (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--data", metavar="FILE.h5", help="dataset (default: the first run's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--overwrite", action="store_true", help="replace the gallery already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas gallery``; returns the exit status (module docstring)."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if at_least_one("factmas gallery", args, 'photos', 'facts_per_task', 'top_images'):
        return 2
    logging.basicConfig(level=logging.WARNING)
    from factmas.api.tools import make_gallery
    try:
        index = make_gallery(args.runs, args.out, args.photos, args.facts_per_task, args.top_images,
                             args.seed, args.data, args.device, overwrite=args.overwrite)
    except (GalleryError, ImportError) as e:
        print(f"factmas gallery: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"factmas gallery: error: --out {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"factmas gallery: wrote {index}")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas gallery", main))
