"""Build the factmas HDF5 file from Visual Genome's annotations and images.

    python -m data_prep.visual_genome --relationships relationships.json [--attributes attributes.json]
        [--objects objects.json] --images DIR --out FILE.h5 [--names name|synset] [--limit-images N]
        [--image-size 224] [--min-images 14] [--max-image-frac 0.3] [--num-tasks 4] ...

Facts in the orders of the Sherlock benchmark (Elhoseiny et al., AAAI 2017), whose large-scale facts
came in part from such scene-graph annotations:
⟨S,P,O⟩ from a relationship, ⟨S,P⟩ from an attribute (⟨S, attribute⟩: "S is/does P") and from the
active verb of a relationship (⟨man, ride⟩ beside ⟨man, ride, horse⟩), ⟨S⟩ from every named object
(objects, and the subject and object of relationships and attributes). Words: data_prep/vg_words.py.
The thresholds, image split and task splits are those of the Flickr8k builder (data_prep/build.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from . import vg_words
from .build import BuildError, add_common_args, assemble, build_command, options_from_args
from .images import scan_images
from .jsonstream import iter_records

log = logging.getLogger(__name__)

# file option → the key of each record's list (Visual Genome's names)
LIST_KEY = {"relationships": "relationships", "attributes": "attributes", "objects": "objects"}
IMAGE_FOLDERS = ("", "VG_100K", "VG_100K_2")     # the two image zips unpack to these folders
NAMES = ("name", "synset")
EXAMPLES = 20                                    # bad annotations listed in the report


class VisualGenomeError(ValueError):
    """A Visual Genome file that cannot be read; the message names the file, record and key."""


class Skips:
    """Annotations left out, counted by kind, with the first ``EXAMPLES`` listed (file:record:item)."""

    def __init__(self, strict: bool):
        self.strict, self.counts, self.examples = strict, Counter(), []

    def add(self, where: str, kind: str, detail: str = "") -> None:
        """Count one; under ``strict`` raise VisualGenomeError naming ``where`` instead."""
        text = f"{where}: {kind}{' ' + detail if detail else ''}"
        if self.strict:
            raise VisualGenomeError(f"{text} (--strict refuses bad annotations; without it they "
                                    "are skipped and counted)")
        self.counts[kind] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(text)


def _image_id(rec, where: str) -> int:
    if not isinstance(rec, dict):
        raise VisualGenomeError(f"{where}: expected a JSON object with 'image_id', got "
                                f"{type(rec).__name__}")
    key = "image_id" if "image_id" in rec else "id" if "id" in rec else None
    if key is None:
        raise VisualGenomeError(f"{where}: missing key 'image_id' (found {sorted(rec)[:8]})")
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VisualGenomeError(f"{where}: '{key}' must be an integer >= 0, got {value!r}")
    return value


def _name(obj, where: str, role: str, names: str, skips: Skips) -> str | None:
    """The normalised noun of a VG object (``name`` or ``names[0]``; or its first synset)."""
    if not isinstance(obj, dict):
        skips.add(where, f"'{role}' is not an object", repr(obj)[:40])
        return None
    if names == "synset":
        syn = obj.get("synsets")
        if not isinstance(syn, list) or not syn or not isinstance(syn[0], str):
            skips.add(where, f"{role} without a synset")
            return None
        word = vg_words.synset_noun(syn[0])
        if word is None:
            skips.add(where, f"{role} synset without a usable noun", repr(syn[0]))
        return word
    text = obj.get("name")
    if text is None and isinstance(obj.get("names"), list):
        text = next((t for t in obj["names"] if isinstance(t, str) and t.strip()), None)
    if text is None and "name" not in obj and "names" not in obj:
        skips.add(where, f"{role} without 'name' or 'names'")
        return None
    if not isinstance(text, str):
        skips.add(where, f"{role} name is not text", repr(text)[:40])
        return None
    if not text.strip():
        skips.add(where, f"{role} with an empty name", repr(text))
        return None
    word = vg_words.noun(text)
    if word is None:
        skips.add(where, f"{role} name without a usable noun", repr(text))
    return word


def _relationship(item, where: str, names: str, skips: Skips) -> set:
    if not isinstance(item, dict):
        skips.add(where, "relationship is not an object")
        return set()
    missing = [k for k in ("predicate", "subject", "object") if k not in item]
    if missing:
        skips.add(where, f"relationship without {missing[0]!r}")
        return set()
    text = item["predicate"]
    if not isinstance(text, str):
        skips.add(where, "predicate is not text", repr(text)[:40])
        return set()
    if not text.strip():
        skips.add(where, "empty predicate", repr(text))
        return set()
    pred = vg_words.predicate(text)
    if pred is None:
        skips.add(where, f"predicate without words or longer than {vg_words.MAX_SLOT_WORDS} words",
                  repr(text))
        return set()
    s = _name(item["subject"], where, "subject", names, skips)      # one skip per relationship:
    o = None if s is None else _name(item["object"], where, "object", names, skips)   # the first
    if s is None or o is None:
        return set()
    p, verb = pred
    facts = {(s, p, o), (s, "", ""), (o, "", "")}
    if verb:
        facts.add((s, verb, ""))
    return facts


def _attributed_object(item, where: str, names: str, skips: Skips) -> set:
    s = _name(item, where, "object", names, skips)
    if s is None:
        return set()
    facts = {(s, "", "")}
    attrs = item.get("attributes", [])
    if attrs is None:
        attrs = []
    if not isinstance(attrs, list):
        skips.add(where, "'attributes' is not a list", repr(attrs)[:40])
        return facts
    for a in attrs:
        if not isinstance(a, str) or not a.strip():
            skips.add(where, "attribute is not text" if not isinstance(a, str) else "empty attribute",
                      repr(a)[:40])
            continue
        word = vg_words.attribute(a)
        if word is None:
            skips.add(where, f"attribute without words or longer than {vg_words.MAX_SLOT_WORDS} words",
                      repr(a))
            continue
        facts.add((s, word, ""))
    return facts


def read_facts(files: dict[str, str | Path], names: str = "name", strict: bool = False,
               progress: bool = False) -> tuple[dict[int, set], Skips, dict]:
    """Per-image fact sets from Visual Genome annotation files.

    Args:
        files: ``{"relationships" | "attributes" | "objects": path}``; each file is a JSON array of
            per-image records ``{"image_id": int, <kind>: [items]}`` (``id`` is accepted for
            ``image_id``).
        names: ``"name"`` (the annotated name) or ``"synset"`` (the first WordNet synset).
    Returns:
        ({image id: {(S, P, O)}} of the images with a fact, the skipped annotations, {kind: records
        read, and "images_without_fact": annotated images none of whose annotations was usable}).
    Raises:
        VisualGenomeError: a file is missing or not a JSON array; a record is not an object, lacks
            ``image_id`` or its item list, or has one of another type (file, record index, key); under
            ``strict``, the first bad annotation (file:record:item and what is wrong).
    """
    from factmas.progress import progress_bar

    if names not in NAMES:
        raise VisualGenomeError(f"--names {names!r}; valid: {list(NAMES)}")
    by_image: dict[int, set] = {}
    skips = Skips(strict)
    records = {}
    for kind, path in files.items():
        key = LIST_KEY[kind]
        t0, n = time.perf_counter(), 0
        stream = iter_records(path, VisualGenomeError)
        for index, rec in progress_bar(stream, desc=f"reading {Path(path).name}", unit="img",
                                       enabled=progress, mininterval=1.0):
            where = f"{path}: record {index}"
            image = _image_id(rec, where)
            items = rec.get(key)
            if not isinstance(items, list):
                raise VisualGenomeError(f"{where} (image_id {image}): expected a list under {key!r}, "
                                        f"got {'no such key' if key not in rec else type(items).__name__}")
            facts = by_image.setdefault(image, set())
            for j, item in enumerate(items):
                at = f"{where} {key}[{j}]"
                if kind == "relationships":
                    facts |= _relationship(item, at, names, skips)
                elif not isinstance(item, dict):
                    skips.add(at, "item is not an object")
                else:
                    facts |= _attributed_object(item, at, names, skips)
            n += 1
        records[kind] = n
        log.info("read %d records from %s in %.1f s", n, path, time.perf_counter() - t0)
    records["images_without_fact"] = sum(1 for v in by_image.values() if not v)
    return {k: v for k, v in by_image.items() if v}, skips, records


def image_files(root: str | Path) -> dict[int, str]:
    """{image id: path relative to ``root``} of the ``<id>.jpg`` files in ``root``, ``root/VG_100K``
    and ``root/VG_100K_2`` (the first found wins)."""
    root = Path(root)
    out: dict[int, str] = {}
    for sub in IMAGE_FOLDERS:
        folder = root / sub if sub else root
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for e in it:
                stem, dot, ext = e.name.partition(".")
                if dot and ext.lower() == "jpg" and stem.isdigit() and e.is_file():
                    out.setdefault(int(stem), f"{sub}/{e.name}" if sub else e.name)
    return out


def build(args: argparse.Namespace):
    """Run the import for parsed arguments; returns the BuildReport."""
    opts = options_from_args(args)
    files = {k: getattr(args, k) for k in LIST_KEY if getattr(args, k)}
    if not files:
        raise BuildError("no annotations: give --relationships (and/or --attributes, --objects)")
    if args.limit_images is not None and args.limit_images < 1:
        raise BuildError(f"--limit-images must be >= 1, got {args.limit_images}")
    root = Path(args.images)
    if not root.is_dir():
        raise BuildError(f"{root}: --images folder not found")
    if Path(args.out).exists() and not opts.overwrite:
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    by_image, skips, records = read_facts(files, args.names, opts.strict, progress=not args.quiet)
    read_s = time.perf_counter() - t0
    if skips.counts:
        print(f"skipped {sum(skips.counts.values())} annotation(s): {dict(skips.counts)}; first:",
              file=sys.stderr)
        for e in skips.examples:
            print(f"  {e}", file=sys.stderr)
    ids = sorted(by_image)
    if args.limit_images is not None:
        ids = ids[: args.limit_images]
    if not ids:
        raise BuildError(f"no image has a usable annotation in {', '.join(map(str, files.values()))}")
    found = image_files(root)
    names = [found.get(i, f"{i}.jpg") for i in ids]
    log.info("%d annotated images, %d with a file under %s", len(ids), sum(i in found for i in ids), root)
    dec = scan_images([root / n for n in names], opts.image_size, opts.strict, progress=not args.quiet)
    usable = [names[k] for k in dec.kept]
    source = {"builder": "data_prep.visual_genome", "image_root": str(root.resolve()),
              **{k: str(Path(v).resolve()) for k, v in files.items()}, "names": args.names,
              "limit_images": args.limit_images, "records": records,
              "annotations_skipped": dict(skips.counts), "annotations_skipped_first": skips.examples,
              "words": "data_prep/vg_words.py rules (data_prep/README.md, Visual Genome)"}
    timings = {"read_seconds": round(read_s, 3), "decode_seconds": round(dec.seconds, 3),
               "images_per_second": round(dec.rate, 1)}
    report = assemble(args.out, dec.images, usable, [by_image[ids[k]] for k in dec.kept], opts, source,
                      dec.skipped, timings)
    report.counts["annotations_skipped"] = dict(skips.counts)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    p = argparse.ArgumentParser(prog="python -m data_prep.visual_genome",
                                description=__doc__.split("\n")[0])
    p.add_argument("--relationships",
                   help="Visual Genome relationships.json: ⟨S,P,O⟩, ⟨S,P⟩, ⟨S⟩ facts")
    p.add_argument("--attributes", help="attributes.json: ⟨S, attribute⟩ and ⟨S⟩ facts")
    p.add_argument("--objects", help="objects.json: ⟨S⟩ facts")
    p.add_argument("--images", required=True,
                   help="folder with <image_id>.jpg, directly or in VG_100K/ and VG_100K_2/")
    p.add_argument("--names", choices=NAMES, default="name",
                   help="object words from the annotated name (default; head noun, singular) or from "
                        "the first WordNet synset")
    p.add_argument("--limit-images", type=int, default=None,
                   help="only the first N annotated image ids in numeric order (tests, CI, a subset "
                        "that fits in memory: all images are held while the file is written)")
    # the Flickr8k builder's thresholds (data_prep/README.md, "Thresholds")
    add_common_args(p, min_images=14, max_image_frac=0.3)
    status, report = build_command(p, build, argv)
    if status:
        return status
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("data_prep.visual_genome", main))
