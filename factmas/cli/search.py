"""``factmas search``: the photos that fit a fact best (fact → images), from a trained run.

Usage::

    factmas search --run RUN_DIR "dog, run through, grass" [--images DIR | --data FILE.h5]
                   [--image-split test] [--k 10] [--json] [--checkpoint last.pt] [--device auto]

The fact is typed as "S", "S, P" or "S, P, O" (comma-separated slots). Words are lower-cased and, when
a word is not in the run's vocabulary, its lemmas (lemminflect, as the dataset's facts were mined:
"dogs" → dog, "running" → run; people words such as "children" → person) are tried; words still
unknown are named in the error (exit 2).

Searched images: ``--images DIR`` = the image files of a folder, embedded once with
``model.embed_pixels`` into ``DIR/.factmas-index/`` (``factmas.explore.search_index``; reused while run and
files are unchanged); otherwise the images of ``--image-split`` (default test) of the dataset
(``--data``, default the run's), read through the feature cache (``factmas.model.features.image_inputs``).
Ranking: exact FAISS search (``factmas.evaluation.retrieval.ImageIndex``) by the wildcard distance
D ∈ [0, 4] of ``factmas.space`` (smaller = closer). With the run's calibrator (RUN_DIR/calibration.json,
or ``--calibration FILE``; ``factmas calibrate``) each image also gets p = P(the fact is true of it | D),
fitted on the val images ("probability" in ``--json``; stderr says why when there is none). When searching a dataset and the fact is one of
its facts, each result says whether the fact is true of that image (``true``; ✓ in text output).

Exit status: 0 answered; 2 bad fact, unknown words, or a run/dataset/folder that cannot be used.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from factmas.errors import printable
from factmas.cli.common import at_least_one, parse
from factmas.run.load import RunLoadError
from factmas.explore.search import DISTANCE_LABEL, PROBABILITY_LABEL, SPLITS, SearchError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas search",
                                description="The images that fit a fact best, from a trained run.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory of factmas train")
    p.add_argument("fact", help='the fact as "S", "S, P" or "S, P, O", e.g. "dog, run through, grass"')
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", help="search this folder of photos (indexed once)")
    src.add_argument("--data", metavar="FILE.h5", help="search this dataset's images "
                     "(default: the run's dataset, from RUN_DIR/config.json)")
    p.add_argument("--image-split", default="test", choices=SPLITS,
                   help="dataset images searched (default test)")
    p.add_argument("--k", type=int, default=10, help="images shown (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint in RUN_DIR/checkpoints (default last.pt)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration file (default RUN_DIR/calibration.json; factmas calibrate)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas search``; returns the exit status (module docstring)."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if at_least_one("factmas search", args, 'k'):
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        from factmas.api.run import load_run
        run = load_run(args.run, data=args.data, checkpoint=args.checkpoint, device=args.device)
        out = run.search_record(args.fact, args.images, args.k, args.image_split,
                                calibration=args.calibration)
    except (SearchError, RunLoadError, ImportError) as e:
        print(f"factmas search: error: {e}", file=sys.stderr)
        return 2
    for msg in out.get("unreadable", []):
        print(f"factmas search: skipped unreadable image {printable(msg)}", file=sys.stderr)
    if out.get("calibration_note"):
        print(f"factmas search: note: {out['calibration_note']}", file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(f"{printable(out['fact'])} in {printable(out['source'])}"
          + (" (index reused)" if out.get("index_reused") else ""))
    calibrated = out.get("probability") is not None
    if calibrated:
        print(f"  rank  distance     p  image    ({DISTANCE_LABEL}; p: {PROBABILITY_LABEL})")
    else:
        print(f"  rank  distance  image    ({DISTANCE_LABEL})")
    for r in out["results"]:
        mark = {True: "  ✓", False: "  ✗"}.get(r.get("true"), "")
        p = f"  {r['probability']:4.2f}" if calibrated else ""
        print(f"  {r['rank']:>4}  {r['distance']:8.4f}{p}  {printable(r['image'])}{mark}")
    if out.get("fact_id") is None and "fact_id" in out:
        print("  (not a fact of the dataset: no ✓/✗ marks)")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas search", main))
