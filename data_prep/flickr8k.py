"""Build the factmas HDF5 file from Flickr8k images and captions, mining facts with spaCy.

    python -m data_prep.flickr8k --images DIR --captions FILE --out FILE.h5 [--image-size 224]
        [--min-images 14] [--max-image-frac 0.3] [--num-tasks 4] [--split-seeds 0,1,2]
        [--image-split hash|seed] [--seed 0] [--limit-images N] [--strict] [--overwrite]

The train/val/test images come from a hash of each file name (``--image-split hash``, the default:
stable when the facts change); ``--image-split seed`` draws the seeded permutation of the files
built before (data_prep/build.py).

Without --images/--captions the folder in $FACTMAS_FLICKR8K (with images/ and captions.txt) is used.
Mining rules: data_prep/mining.py and data_prep/README.md.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from pathlib import Path

from .build import BuildError, add_common_args, assemble, build_command, options_from_args
from .images import scan_images
from .textfile import open_utf8

log = logging.getLogger(__name__)
ENV = "FACTMAS_FLICKR8K"


class CaptionsError(ValueError):
    """The captions file is missing or malformed (the message names file and line)."""


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """Captions CSV with header ``image,caption`` → {image name: [captions in file order]}.

    Raises:
        CaptionsError: missing file, wrong header, a row without both fields (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"{path}: captions file not found")
    out: dict[str, list[str]] = {}
    with open_utf8(path, CaptionsError) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise CaptionsError(f"{path}:1: expected the header 'image,caption', got {header!r}")
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise CaptionsError(f"{path}:{line}: expected 'image,caption', got {row!r}")
            out.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    if not out:
        raise CaptionsError(f"{path}: no captions")
    return out


def resolve_paths(images: str | None, captions: str | None) -> tuple[Path, Path]:
    """--images/--captions, or $FACTMAS_FLICKR8K/images and $FACTMAS_FLICKR8K/captions.txt.

    Raises:
        BuildError: neither is given, or only one of --images/--captions.
    """
    if images and captions:
        return Path(images), Path(captions)
    if images or captions:
        raise BuildError("give both --images and --captions (or neither, to use $" + ENV + ")")
    root = os.environ.get(ENV, "")
    if not root:
        raise BuildError(f"no input: give --images DIR --captions FILE, or set {ENV} to a folder "
                         "with images/ and captions.txt")
    return image_folder(Path(root)), Path(root) / "captions.txt"


def image_folder(root: Path) -> Path:
    """``root/images``, or ``root/Images`` (the Kaggle copy's spelling) when only that exists."""
    return root / "Images" if not (root / "images").is_dir() and (root / "Images").is_dir() \
        else root / "images"


def build(args: argparse.Namespace):
    """Run the build for parsed arguments; returns the BuildReport."""
    from .mining import load_nlp, mine_captions
    from factmas.progress import progress_bar

    opts = options_from_args(args)
    if args.limit_images is not None and args.limit_images < 1:
        raise BuildError(f"--limit-images must be >= 1, got {args.limit_images}")
    if args.batch_size < 1:
        raise BuildError(f"--batch-size must be >= 1, got {args.batch_size}")
    images_dir, captions_path = resolve_paths(args.images, args.captions)
    if not images_dir.is_dir():
        raise BuildError(f"{images_dir}: images folder not found")
    if Path(args.out).exists() and not opts.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    captions = read_captions(captions_path)
    names = sorted(captions)
    if args.limit_images is not None:
        names = names[: args.limit_images]
    log.info("%d captioned images (%d captions) from %s", len(names),
             sum(len(captions[n]) for n in names), captions_path)
    dec = scan_images([images_dir / n for n in names], opts.image_size, opts.strict,
                      progress=not args.quiet)
    log.info("decoded %d images in %.1f s (%.0f images/s), skipped %d", len(dec.kept), dec.seconds,
             dec.rate, len(dec.skipped))
    usable = [names[i] for i in dec.kept]
    texts = [(i, c) for i, n in enumerate(usable) for c in captions[n]]
    t0 = time.perf_counter()
    nlp, model_name = load_nlp()
    load_s = time.perf_counter() - t0
    image_facts = [set() for _ in usable]
    t0 = time.perf_counter()
    stream = mine_captions(nlp, (c for _, c in texts), batch_size=args.batch_size)
    # the bar wraps the captions (zip's first argument), so its count reaches the total at the end
    for (i, _), fs in zip(progress_bar(texts, desc="parsing captions", unit="cap", enabled=not args.quiet,
                                       mininterval=1.0), stream):
        image_facts[i] |= fs
    parse_s = time.perf_counter() - t0
    log.info("parsed %d captions in %.1f s (%.0f captions/s)", len(texts), parse_s,
             len(texts) / max(parse_s, 1e-9))
    timings = {"decode_seconds": round(dec.seconds, 3), "images_per_second": round(dec.rate, 1),
               "nlp_load_seconds": round(load_s, 3), "parse_seconds": round(parse_s, 3),
               "captions_parsed": len(texts)}
    import spacy
    source = {"builder": "data_prep.flickr8k", "images": str(images_dir.resolve()),
              "captions": str(captions_path.resolve()), "limit_images": args.limit_images,
              "spacy_model": f"{model_name} {nlp.meta.get('version', '?')}", "spacy": spacy.__version__,
              "mining": "data_prep/mining.py rules (data_prep/README.md)"}
    report = assemble(args.out, dec.images, usable, image_facts, opts, source, dec.skipped, timings)
    report.counts["timings"] = timings
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns the exit status (0 ok, 2 bad input)."""
    p = argparse.ArgumentParser(prog="python -m data_prep.flickr8k", description=__doc__.split("\n")[0])
    p.add_argument("--images", help=f"folder of images (default ${ENV}/images or ${ENV}/Images)")
    p.add_argument("--captions", help=f"captions CSV 'image,caption' (default ${ENV}/captions.txt)")
    p.add_argument("--limit-images", type=int, default=None,
                   help="only the first N captioned images, sorted by name (tests, CI)")
    p.add_argument("--batch-size", type=int, default=256, help="spaCy nlp.pipe batch size (256)")
    # 14 training images: the bar of 20 images among all images (the fact set of the earlier files)
    # restated on the training part, which is 0.7 of the images; 20 training images would keep 236
    # facts instead of 361 (data_prep/README.md, "Thresholds").
    add_common_args(p, min_images=14, max_image_frac=0.3)
    status, report = build_command(p, build, argv)
    if status:
        return status
    t = report.counts["timings"]
    print(f"decoded {t['images_per_second']:.0f} images/s; parsed {t['captions_parsed']} captions in "
          f"{t['parse_seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("data_prep.flickr8k", main))
