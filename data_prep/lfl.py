"""Build the factmas HDF5 file from Lifelong Fact Learning's mid-scale (6DS) or large-scale (Sherlock
LSC) folder (Elhoseiny et al., ACCV 2018, arXiv 1812.10524).

    python -m data_prep.lfl --root data/mid_scale --out FILE.h5 [--splits 4tasks_random,4tasks_semantic]
        [--image-size 224] [--min-images 1] [--max-image-frac 1] [--num-tasks 4] ...

The format is the one LFL's public loaders read (github.com/Elhoseiny-VisionCAIR-Lab/
lifelong_fact_learning, code/utils/dataset_utils.py and eval/extract_gt_words.py); the files
themselves are not public in a form these tests could fetch, so this reader is tested on files in
that format, not on the released ones:

    ROOT/images/<image_links>                       the photos (image_links: e.g. train/x.jpg)
    ROOT/splits/<K>tasks_<name>/B<k>_train.csv      one row per (image, fact): image_links, id, and
    ROOT/splits/<K>tasks_<name>/B<k>_test.csv         optionally w_s, w_p, w_o (1 where the slot is used)
    ROOT/splits/<K>tasks_<name>/B<k>_facts.csv      the facts of task k: id, S, P, O (P, O empty or
                                                      'nan' for lower orders; other columns ignored)

Every (image, fact) row of every train/test file becomes a pair; the facts' words come from the
``B<k>_facts.csv`` files (lower-cased, whitespace collapsed, at most 4 words a slot, as
``data_prep.from_csv``). Each split folder's task assignment (task k-1 for the facts of ``B<k>``) is
written as the split ``lfl_<folder>`` (attr ``kind`` "given"), beside factmas's own random, semantic
and image-disjoint splits. LFL's train/test image division is not kept: the file gets factmas's
0.7/0.1/0.2 image split (``--image-split``: by default from a hash of each image's base name), which
has the validation images λ is chosen on. The thresholds
default to keeping every fact (the released facts were already chosen), as ``data_prep.from_csv``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import re
import sys
from pathlib import Path

from factmas.data.dataset import MAX_SLOT_WORDS

from .build import BuildError, add_common_args, assemble, build_command, options_from_args
from .images import scan_images
from .textfile import open_utf8

log = logging.getLogger(__name__)
SPLIT_DIR = re.compile(r"^(\d+)tasks_(\w+)$")
TASK_FILE = re.compile(r"^B(\d+)_(train|test|facts)\.csv$")
EMPTY = frozenset({"", "nan", "none", "null"})


class LFLError(ValueError):
    """A malformed LFL file; the message names the file and line."""


def _rows(path: Path, need: tuple[str, ...]):
    """(line, {column: value}) of a CSV with a header holding ``need``. Raises LFLError."""
    with open_utf8(path, LFLError) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise LFLError(f"{path}:1: empty file (expected a header with {', '.join(need)})")
        header = [h.strip() for h in header]
        missing = [c for c in need if c not in header]
        if missing:
            raise LFLError(f"{path}:1: missing column {missing[0]!r}; found {header}")
        for row in reader:
            if not row or not any(x.strip() for x in row):
                continue
            if len(row) < len(header):
                raise LFLError(f"{path}:{reader.line_num}: {len(row)} columns, the header has {len(header)}")
            yield reader.line_num, dict(zip(header, row))


def _slot(value: str, where: str, col: str) -> str:
    text = " ".join(value.lower().split())
    if text in EMPTY:
        return ""
    if len(text.split()) > MAX_SLOT_WORDS:
        raise LFLError(f"{where}: {col} {text!r} has more than {MAX_SLOT_WORDS} words")
    return text


def _int(value: str, where: str, col: str) -> int:
    """An integer column; ``3.0`` (how pandas writes an integer column that has a gap) is 3."""
    try:
        number = float(value.strip())
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise LFLError(f"{where}: {col} must be an integer, got {value!r}")
    return int(number)


def image_path(images_dir: Path, link: str) -> Path:
    """``images_dir/link``, or its ``.png`` sibling when only that exists (LFL's loader does the same:
    a few 6DS test photos are PNG files listed as .jpg)."""
    path = images_dir / link
    png = path.with_suffix(".png")
    return png if not path.exists() and png.exists() else path


def split_folders(root: Path, names: list[str] | None) -> dict[str, tuple[int, dict[int, dict[str, Path]]]]:
    """{folder name: (K, {k: {"train"|"test"|"facts": path}})} of ``root/splits``. Raises LFLError."""
    base = root / "splits"
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and SPLIT_DIR.match(p.name)) \
        if base.is_dir() else []
    if not found:
        raise LFLError(f"{base}: no split folder (<K>tasks_<name>, e.g. 4tasks_random)")
    names = names or found
    out = {}
    for name in names:
        if name not in found:
            raise LFLError(f"--splits {name}: no folder {base / name}; found {found}")
        k_tasks = int(SPLIT_DIR.match(name).group(1))
        files: dict[int, dict[str, Path]] = {}
        for p in (base / name).iterdir():
            m = TASK_FILE.match(p.name)
            if m:
                files.setdefault(int(m.group(1)), {})[m.group(2)] = p
        for k in range(1, k_tasks + 1):
            have = files.get(k, {})
            for kind in ("facts", "train", "test"):
                if kind not in have:
                    raise LFLError(f"{base / name}: missing B{k}_{kind}.csv ({name} has {k_tasks} tasks)")
        extra = sorted(set(files) - set(range(1, k_tasks + 1)))
        if extra:
            raise LFLError(f"{base / name}: B{extra[0]}_* beyond the {k_tasks} tasks its name gives")
        out[name] = (k_tasks, files)
    return out


def read_split(k_tasks: int, files: dict[int, dict[str, Path]]):
    """({fact id: (S, P, O)}, {fact: task 0..K-1}, [(image path, fact id, where)]) of one folder.

    Raises:
        LFLError: a missing column, an empty subject, an object without a predicate, a fact id
            defined twice with other words or in two tasks, a row whose id has no fact, whose w_s /
            w_p / w_o disagree with the fact's slots, or without an image (file:line).
    """
    facts: dict[int, tuple[str, str, str]] = {}
    task_of: dict[tuple, int] = {}
    for k in range(1, k_tasks + 1):
        path = files[k]["facts"]
        for line, row in _rows(path, ("id", "S", "P", "O")):
            where = f"{path}:{line}"
            fid = _int(row["id"], where, "id")
            fact = tuple(_slot(row[c], where, c) for c in ("S", "P", "O"))
            if not fact[0]:
                raise LFLError(f"{where}: empty subject (S is required)")
            if fact[2] and not fact[1]:
                raise LFLError(f"{where}: object {fact[2]!r} without a predicate")
            if facts.get(fid, fact) != fact:
                raise LFLError(f"{where}: fact id {fid} is {fact}, earlier {facts[fid]}")
            if task_of.get(fact, k - 1) != k - 1:
                raise LFLError(f"{where}: fact {fact} is in B{k} and in B{task_of[fact] + 1}")
            facts[fid], task_of[fact] = fact, k - 1
    rows = []
    for k in range(1, k_tasks + 1):
        for kind in ("train", "test"):
            path = files[k][kind]
            for line, row in _rows(path, ("image_links", "id")):
                where = f"{path}:{line}"
                image = row["image_links"].replace("'", "").strip()   # as LFL's loader
                if not image:
                    raise LFLError(f"{where}: empty image_links")
                fid = _int(row["id"], where, "id")
                if fid not in facts:
                    raise LFLError(f"{where}: fact id {fid} is in no B*_facts.csv of this folder")
                fact = facts[fid]
                for col, used in (("w_s", True), ("w_p", bool(fact[1])), ("w_o", bool(fact[2]))):
                    if col in row and row[col].strip() and _int(row[col], where, col) != used:
                        raise LFLError(f"{where}: {col}={row[col]} but fact {fid} is {fact}")
                rows.append((image, fid))
    return facts, task_of, rows


def build(args: argparse.Namespace):
    """Run the import for parsed arguments; returns the BuildReport."""
    opts = options_from_args(args)
    root = Path(args.root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise BuildError(f"{images_dir}: images folder not found (--root must hold images/ and splits/)")
    if Path(args.out).exists() and not opts.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    wanted = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    by_image: dict[str, set] = {}
    given = {}
    n_rows = 0
    for name, (k_tasks, files) in split_folders(root, wanted).items():
        facts, task_of, rows = read_split(k_tasks, files)
        for image, fid in rows:
            by_image.setdefault(image, set()).add(facts[fid])
        n_rows += len(rows)
        given[f"lfl_{name}"] = (task_of, {"num_tasks": k_tasks, "seed": -1, "source": name})
        log.info("%s: %d facts, %d (image, fact) rows", name, len(facts), len(rows))
    all_facts = {f for fs in by_image.values() for f in fs}
    for name, (task_of, _) in given.items():    # every folder must place every fact
        missing = all_facts - set(task_of)
        if missing:
            raise LFLError(f"split folder {name[4:]} has no task for fact {sorted(missing)[0]} "
                           f"(and {len(missing) - 1} more) that another folder's rows use")
    names = sorted(by_image)
    dec = scan_images([image_path(images_dir, n) for n in names], opts.image_size, opts.strict,
                      progress=not args.quiet)
    usable = [names[i] for i in dec.kept]
    source = {"builder": "data_prep.lfl", "root": str(root.resolve()), "split_folders": sorted(given),
              "rows": n_rows}
    timings = {"decode_seconds": round(dec.seconds, 3), "images_per_second": round(dec.rate, 1)}
    return assemble(args.out, dec.images, usable, [by_image[n] for n in usable], opts, source,
                    dec.skipped, timings, given_splits=given)


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    p = argparse.ArgumentParser(prog="python -m data_prep.lfl", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="LFL data folder with images/ and splits/ "
                                                 "(data/mid_scale or data/large_scale)")
    p.add_argument("--splits", default=None,
                   help="split folders to read, comma-separated (default: every <K>tasks_<name> folder)")
    add_common_args(p, min_images=1, max_image_frac=1.0)
    status, report = build_command(p, build, argv)
    if status:
        return status
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("data_prep.lfl", main))
