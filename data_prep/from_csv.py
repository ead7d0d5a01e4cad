"""Build the factmas HDF5 file from an annotated fact dataset: one row per image–fact pair.

    python -m data_prep.from_csv --csv FILE.csv --image-root DIR --out FILE.h5 [options]
    python -m data_prep.from_csv --csv FILE.jsonl --image-root DIR --out FILE.h5 [options]

CSV: a header row and the columns ``image,S,P,O`` (P and O empty for lower orders); the aliases
``image_path``/``path``/``image_id`` for ``image`` and ``subject``/``predicate``/``object`` for S, P, O
are accepted. JSONL (chosen by the .jsonl extension): one object per line with the same keys.
Image paths are relative to --image-root (or absolute). Words are lower-cased and whitespace is
collapsed. Thresholds default to keeping every annotated fact (--min-images 1, --max-image-frac 1);
--implied adds the ⟨S⟩ and ⟨S,P⟩ facts implied by each ⟨S,P,O⟩ row.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from factmas.data.dataset import MAX_SLOT_WORDS

from .build import BuildError, add_common_args, assemble, build_command, options_from_args
from .images import scan_images
from .textfile import open_utf8

log = logging.getLogger(__name__)

ALIASES = {
    "image": ("image", "image_path", "path", "image_id", "img"),
    "S": ("S", "s", "subject", "sub"),
    "P": ("P", "p", "predicate", "pred"),
    "O": ("O", "o", "object", "obj"),
}


class AnnotationError(ValueError):
    """A malformed annotation row; the message names the file and line."""


def _columns(keys, where: str) -> dict[str, str]:
    """Map image/S/P/O to the file's own column names. Raises AnnotationError naming the missing one."""
    keys = list(keys)
    found = {}
    for col, names in ALIASES.items():
        hit = next((k for k in keys if k.strip() in names or k.strip().lower() in names), None)
        if hit is None:
            raise AnnotationError(f"{where}: missing column {col!r} (accepted names: {', '.join(names)}); "
                                  f"found {keys}")
        found[col] = hit
    return found


def _slot(value, where: str, col: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: column {col!r} must be text, got {value!r}")
    text = " ".join(value.lower().split())
    if len(text.split()) > MAX_SLOT_WORDS:
        raise AnnotationError(f"{where}: {col} {text!r} has more than {MAX_SLOT_WORDS} words")
    return text


def _fact(rec: dict, cols: dict, where: str) -> tuple[str, tuple[str, str, str]]:
    image = rec.get(cols["image"])
    if not isinstance(image, str) or not image.strip():
        raise AnnotationError(f"{where}: empty image path")
    s, p, o = (_slot(rec.get(cols[c]), where, c) for c in ("S", "P", "O"))
    if not s:
        raise AnnotationError(f"{where}: empty subject (S is required)")
    if o and not p:
        raise AnnotationError(f"{where}: object {o!r} without a predicate")
    return image.strip(), (s, p, o)


def read_annotations(path: str | Path) -> list[tuple[str, tuple[str, str, str], int]]:
    """Rows of a .csv or .jsonl annotation file as (image path, (S, P, O), line number).

    Raises:
        AnnotationError: missing file or column, a row with a missing column, an empty subject, an
            object without predicate, a slot longer than MAX_SLOT_WORDS words, bad JSON (file:line).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    rows = []
    with open_utf8(path, AnnotationError) as fh:
        if path.suffix.lower() == ".jsonl":
            for line, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                where = f"{path}:{line}"
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise AnnotationError(f"{where}: not valid JSON: {e.msg}") from None
                if not isinstance(rec, dict):
                    raise AnnotationError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                rows.append((*_fact(rec, _columns(rec.keys(), where), where), line))
        else:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise AnnotationError(f"{path}:1: empty file (expected a header image,S,P,O)")
            cols = _columns(header, f"{path}:1")
            idx = {c: header.index(name) for c, name in cols.items()}
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or not any(x.strip() for x in row):
                    continue
                if len(row) != len(header):
                    raise AnnotationError(f"{where}: {len(row)} columns, the header has {len(header)} "
                                          f"({','.join(header)})")
                rec = {cols[c]: row[i] for c, i in idx.items()}
                rows.append((*_fact(rec, cols, where), reader.line_num))
    if not rows:
        raise AnnotationError(f"{path}: no annotation rows")
    return rows


def build(args: argparse.Namespace):
    """Run the import for parsed arguments; returns the BuildReport."""
    opts = options_from_args(args)
    root = Path(args.image_root)
    if not root.is_dir():
        raise BuildError(f"{root}: --image-root folder not found")
    if Path(args.out).exists() and not opts.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    rows = read_annotations(args.csv)
    by_image: dict[str, set] = {}
    for image, fact, _ in rows:
        facts = by_image.setdefault(image, set())
        facts.add(fact)
        if args.implied:  # ⟨S,P,O⟩ also gives ⟨S,P⟩ and ⟨S⟩
            facts.update({(fact[0], "", ""), (fact[0], fact[1], "")} if fact[1] else {(fact[0], "", "")})
    names = sorted(by_image)
    log.info("%d annotation rows, %d images, %d distinct facts from %s", len(rows), len(names),
             len({f for _, f, _ in rows}), args.csv)
    dec = scan_images([root / n for n in names], opts.image_size, opts.strict, progress=not args.quiet)
    usable = [names[i] for i in dec.kept]
    source = {"builder": "data_prep.from_csv", "annotations": str(Path(args.csv).resolve()),
              "image_root": str(root.resolve()), "rows": len(rows)}
    timings = {"decode_seconds": round(dec.seconds, 3), "images_per_second": round(dec.rate, 1)}
    report = assemble(args.out, dec.images, usable, [by_image[n] for n in usable], opts, source,
                      dec.skipped, timings)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns the exit status (0 ok, 2 bad input)."""
    p = argparse.ArgumentParser(prog="python -m data_prep.from_csv", description=__doc__.split("\n")[0])
    p.add_argument("--csv", required=True, help="annotation file, .csv or .jsonl (image,S,P,O)")
    p.add_argument("--image-root", required=True, help="folder the image paths are relative to")
    p.add_argument("--implied", action="store_true",
                   help="also label each image with the ⟨S⟩ and ⟨S,P⟩ implied by its ⟨S,P,O⟩ rows")
    add_common_args(p, min_images=1, max_image_frac=1.0)
    status, report = build_command(p, build, argv)
    if status:
        return status
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("data_prep.from_csv", main))
