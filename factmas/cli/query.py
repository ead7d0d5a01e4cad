"""``factmas query``: the top-k facts ⟨S,P,O⟩ of images, from a trained run.

Usage::

    factmas query --run RUN_DIR IMAGE [IMAGE ...] [--k 5] [--json] [--all] [--data FILE.h5]
                  [--checkpoint last.pt] [--calibration FILE] [--device auto|cpu|cuda]

Reads RUN_DIR/config.json (the run configuration and the dataset path, which ``--data`` overrides:
the facts and their vocabulary come from the dataset), the checkpoint (``last.pt`` by default) with
``torch.load(..., weights_only=True)``, embeds every fact, and answers each image with an exact FAISS
search (``factmas.explore.query.answer``, ``factmas.evaluation.retrieval.FactIndex``, wildcard distance
D ∈ [0, 4], smaller = closer). Any image file PIL reads (JPEG, PNG; grayscale, palette, alpha, CMYK,
any size) is converted to RGB and resized to the dataset's image size as in training
(``factmas.model.load_image_file``, ``preprocess``).

Confidence: with the run's calibrator (``RUN_DIR/calibration.json``, written at the end of training or
by ``factmas calibrate``; ``--calibration FILE`` names another), each fact gets p = P(true | D),
fitted on the val images, and only the facts with p ≥ p* (the threshold chosen on val) are shown; an
image whose top-k has none is answered "no known fact fits this photo (best: ⟨…⟩, p = …)". ``--all``
shows every fact of the top-k with its p. ``--json`` carries every fact with "probability", and per
image "threshold" and "abstain". Without a usable calibrator the facts are shown with D only and
stderr says why (no file, an invalid file, or one fitted for other weights).

Exit status: 0 every image answered; 1 some image could not be read (each such image is named on
stderr, and in ``--json`` output as {"image", "error"}; the others are still answered); 2 the run,
checkpoint or dataset could not be used.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from factmas.errors import printable
from factmas.cli.common import at_least_one, parse
from factmas.run.load import RunLoadError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas query",
                                description="Top-k facts <S,P,O> of images, from a trained run.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory of factmas train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files (any size or mode)")
    p.add_argument("--k", type=int, default=5, help="facts per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint name in RUN_DIR/checkpoints")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration file (default RUN_DIR/calibration.json; factmas calibrate)")
    p.add_argument("--all", action="store_true",
                   help="show every fact of the top-k, also those below the threshold p*")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factmas query``; returns the exit status (module docstring)."""
    args = parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    if at_least_one("factmas query", args, 'k'):
        return 2
    logging.basicConfig(level=logging.WARNING)
    from factmas.api.run import load_run
    try:
        run = load_run(args.run, data=args.data, checkpoint=args.checkpoint, device=args.device)
        run.model                                    # load now: a bad run exits 2 before any image
    except (RunLoadError, ImportError) as e:
        print(f"factmas query: error: {e}", file=sys.stderr)
        return 2
    calibrator, why = run.calibrator(args.calibration)
    if why:
        print(f"factmas query: note: {why}", file=sys.stderr)
    results = run.query_records(args.images, args.k, calibrator=calibrator)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"factmas query: error: {printable(r['error'])}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        print_text(results, calibrator, args.all)
    if failed:
        print(f"factmas query: {len(failed)} of {len(results)} images could not be read",
              file=sys.stderr)
    return 1 if failed else 0


def print_text(results: list[dict], calibrator, show_all: bool = False) -> None:
    """The answers as text: each image, then its facts with D (and p, with a calibrator: only those
    with p ≥ p* unless ``show_all``; none → "no known fact fits this photo")."""
    if not any("facts" in r for r in results):
        return
    if calibrator is None:
        print("(the number is the wildcard distance D in [0, 4]: smaller = closer)")
    else:
        hidden = "" if show_all else f"; facts with p < {calibrator.threshold:.2f} are not shown"
        print("(D: the wildcard distance in [0, 4], smaller = closer; p: the probability that the fact "
              f"is true at that distance, fitted on the run's val images{hidden})")
    for r in results:
        if "facts" not in r:
            continue
        print(printable(r["image"]))                # a name cannot drive the terminal
        for f in r["facts"]:
            if calibrator is None:
                print(f"  {f['rank']:>3}. {printable(f['text']):<40} {f['distance']:.4f}")
            elif show_all or f["probability"] >= r["threshold"]:
                print(f"  {f['rank']:>3}. {printable(f['text']):<40} D = {f['distance']:.4f}  "
                      f"p = {f['probability']:.2f}")
        if r["abstain"] and r["facts"]:
            best = r["facts"][0]
            print(f"  no known fact fits this photo (best: {printable(best['text'])}, "
                  f"p = {best['probability']:.2f})")


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas query", main))
