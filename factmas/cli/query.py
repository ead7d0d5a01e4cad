"""``factmas query``: the top-k facts ⟨S,P,O⟩ of images, from a trained run.

Usage::

    factmas query --run RUN_DIR IMAGE [IMAGE ...] [--k 5] [--json] [--data FILE.h5]
                  [--checkpoint last.pt] [--device auto|cpu|cuda]

Reads RUN_DIR/config.json (the run configuration and the dataset path, which ``--data`` overrides:
the facts and their vocabulary come from the dataset), the checkpoint (``last.pt`` by default) with
``torch.load(..., weights_only=True)``, embeds every fact, and answers each image with an exact FAISS
search (``factmas.query.answer``, ``factmas.evaluation.retrieval.FactIndex``, wildcard distance
D ∈ [0, 4], smaller = closer). Any image file PIL reads (JPEG, PNG; grayscale, palette, alpha, CMYK,
any size) is converted to RGB and resized to the dataset's image size as in training
(``factmas.model.load_image_file``, ``preprocess``).

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
from factmas.query import answer
from factmas.run.load import RunLoadError, load_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factmas query",
                                description="Top-k facts <S,P,O> of images, from a trained run.")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory of factmas train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files (any size or mode)")
    p.add_argument("--k", type=int, default=5, help="facts per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--data", help="dataset file (default: the one in RUN_DIR/config.json)")
    p.add_argument("--checkpoint", default="last.pt", help="checkpoint name in RUN_DIR/checkpoints")
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
    try:
        cfg, data, model, _ = load_run(args.run, args.data, args.checkpoint, args.device)
    except (RunLoadError, ImportError) as e:
        print(f"factmas query: error: {e}", file=sys.stderr)
        return 2
    device = next(model.parameters()).device
    results = answer(model, data, args.images, args.k, device, flip_average=cfg.eval.flip_average)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"factmas query: error: {printable(r['error'])}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        if any("facts" in r for r in results):
            print("(the number is the wildcard distance D in [0, 4]: smaller = closer)")
        for r in results:
            if "facts" not in r:
                continue
            print(printable(r["image"]))                # a name cannot drive the terminal
            for f in r["facts"]:
                print(f"  {f['rank']:>3}. {printable(f['text']):<40} {f['distance']:.4f}")
    if failed:
        print(f"factmas query: {len(failed)} of {len(results)} images could not be read",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("factmas query", main))
