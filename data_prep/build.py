"""From per-image fact sets to the HDF5 file: fact thresholds, image and task splits, provenance, write.

Fact thresholds (``--min-images``, ``--max-image-frac``) are counted on the *training* images only
(``--threshold-images train``, the default): the image split is drawn first over every usable image,
then a fact is kept when at least ``min_images`` training images carry it and at most
``max_image_frac`` of the training images do, then images left without a kept fact are dropped (so
the kept images' fractions are close to, not exactly, 0.7/0.1/0.2). Counting over all images
(``--threshold-images all``, how files were built before) lets the test images decide which facts
exist, a leak; it is kept to rebuild those files exactly (their provenance has no
``threshold_images`` option).

Image split (``--image-split``): ``hash``, the default, gives each image its part from the SHA-256 of
its file name (``splits.hash_image_split``), so changing the facts or the thresholds never moves an
image between train, val and test; ``seed`` draws a permutation with ``--seed``, how every file was
built before this option (their provenance has no ``image_split`` option:
``splits.provenance_image_split`` reads such a file as ``seed``), and rebuilds those files exactly.

Shared by ``data_prep.flickr8k`` (facts mined from captions) and ``data_prep.from_csv`` (annotated
facts). The file is written only through ``factmas.data.dataset.write_dataset`` (atomic, schema v1, or v2
with ``--schema 2``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from factmas.data.dataset import write_dataset
from factmas.data.image_source import ImageSource, take_images
from factmas.io import provenance as run_provenance

from .splits import (DEFAULT_IMAGE_SPLIT, IMAGE_FRACTIONS, IMAGE_SPLITS, check_tasks, disjoint_images,
                     hash_image_split, image_split, random_split, semantic_split, train_counts)

log = logging.getLogger(__name__)


THRESHOLD_IMAGES = ("train", "all")


class BuildError(ValueError):
    """The build cannot produce a useful file; the message says which setting to change."""


@dataclass
class BuildOptions:
    """Settings shared by the builders (the command-line options of the same names)."""
    image_size: int = 224                # the default backbone's input (EfficientNet-Lite0 at 224×224)
    min_images: int = 14                 # data_prep.flickr8k's default (training images; from_csv: 1)
    max_image_frac: float = 0.3
    num_tasks: int = 4
    split_seeds: Sequence[int] = (0, 1, 2)
    semantic: bool = True
    seed: int = 0
    fractions: Sequence[float] = IMAGE_FRACTIONS
    strict: bool = False
    overwrite: bool = False
    threshold_images: str = "train"      # "train": thresholds on training images; "all": older files
    disjoint: bool = True                # also write disjoint{k}_seed{s} beside each random split
    image_split: str = DEFAULT_IMAGE_SPLIT  # "hash" (default): from each image's file name (stable when
                                         # the facts change); "seed": seeded permutation (--seed), the
                                         # files built before (provenance without image_split)
    extra_num_tasks: Sequence[int] = ()  # also random{k}_seed{s} for these k (e.g. 8 → random8_seed*)
    schema: int = 1                      # the file's schema version: 1 raw pixel rows; 2 JPEG bytes
                                         # (lossy, 0.13 × the size; docs/benchmarks.md § 4.2)


def add_common_args(p: argparse.ArgumentParser, min_images: int, max_image_frac: float) -> None:
    """Add the options of :class:`BuildOptions` (with the builder's own threshold defaults)."""
    p.add_argument("--out", required=True, help="output .h5 file (written atomically)")
    p.add_argument("--image-size", type=int, default=BuildOptions.image_size,
                   help=f"side of the stored square images ({BuildOptions.image_size}: the input of the "
                        "default backbone, efficientnet_lite0; 64 suits small_cnn)")
    p.add_argument("--min-images", type=int, default=min_images,
                   help=f"keep a fact seen in at least this many distinct images, counted on the "
                        f"images of --threshold-images ({min_images})")
    p.add_argument("--max-image-frac", type=float, default=max_image_frac,
                   help=f"drop a fact seen in more than this fraction of those images ({max_image_frac})")
    p.add_argument("--num-tasks", type=int, default=4, help="tasks per split (4)")
    p.add_argument("--split-seeds", default="0,1,2",
                   help="seeds of the random{k}_seed{s} splits, comma-separated ('0,1,2'; '' for none)")
    p.add_argument("--no-semantic", action="store_true", help="do not write the semantic{k} split")
    p.add_argument("--no-disjoint", action="store_true",
                   help="do not write the image-disjoint disjoint{k}_seed{s} splits")
    p.add_argument("--threshold-images", choices=THRESHOLD_IMAGES, default="train",
                   help="images on which --min-images/--max-image-frac are counted: train (default) "
                        "or all (files built before this option; lets test images choose the facts)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the train/val/test image split of --image-split seed (0)")
    p.add_argument("--image-split", choices=IMAGE_SPLITS, default=BuildOptions.image_split,
                   help="train/val/test of the images: 'hash' (default), from the SHA-256 of each image's "
                        "file name (stable: changing the facts, thresholds or other images never moves "
                        "an image); 'seed', a permutation drawn with --seed over the usable images (how "
                        "files were built before; rebuilds them exactly)")
    p.add_argument("--extra-num-tasks", default="",
                   help="also write random{k}_seed{s} (for each --split-seeds s) with these task "
                        "counts, comma-separated (e.g. '8' adds random8_seed0..2; '' for none)")
    p.add_argument("--strict", action="store_true", help="an unusable image is an error, not a skip")
    p.add_argument("--schema", type=int, choices=(1, 2), default=1,
                   help="schema version of the file: 1 (default) stores raw uint8 pixel rows; 2 stores "
                        "each image as JPEG bytes (quality 95): about 0.13 × the file size, about 1.2 ms "
                        "per image to decode, and lossy (other pixels, so other features and figures "
                        "than a version-1 file of the same photos)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def options_from_args(a: argparse.Namespace) -> BuildOptions:
    """BuildOptions from parsed arguments. Raises BuildError on a malformed value."""
    try:
        seeds = tuple(int(s) for s in a.split_seeds.split(",") if s.strip())
    except ValueError:
        raise BuildError(f"--split-seeds must be comma-separated integers, got {a.split_seeds!r}") from None
    try:
        extra = tuple(int(s) for s in getattr(a, "extra_num_tasks", "").split(",") if s.strip())
    except ValueError:
        raise BuildError("--extra-num-tasks must be comma-separated integers, got "
                         f"{a.extra_num_tasks!r}") from None
    if any(k < 1 for k in extra):
        raise BuildError(f"--extra-num-tasks must be >= 1, got {a.extra_num_tasks!r}")
    if extra and not seeds:
        raise BuildError(f"--extra-num-tasks {a.extra_num_tasks!r} needs --split-seeds (one "
                         "random{k}_seed{s} per seed)")
    if a.image_size < 1 or a.min_images < 1 or a.num_tasks < 1 or not 0 < a.max_image_frac <= 1:
        raise BuildError("need --image-size >= 1, --min-images >= 1, --num-tasks >= 1 and "
                         "0 < --max-image-frac <= 1")
    if any(s < 0 for s in seeds) or a.seed < 0:
        raise BuildError(f"--split-seeds and --seed must be >= 0, got {a.split_seeds!r} and {a.seed}")
    if Path(a.out).is_dir():
        raise BuildError(f"--out {a.out}: is a directory; expected the path of an .h5 file")
    if not seeds and a.no_semantic:
        raise BuildError("no split requested: give --split-seeds or drop --no-semantic")
    return BuildOptions(image_size=a.image_size, min_images=a.min_images, max_image_frac=a.max_image_frac,
                        num_tasks=a.num_tasks, split_seeds=seeds, semantic=not a.no_semantic,
                        seed=a.seed, strict=a.strict, overwrite=a.overwrite,
                        threshold_images=getattr(a, "threshold_images", "train"),
                        disjoint=not getattr(a, "no_disjoint", False),
                        image_split=getattr(a, "image_split", BuildOptions.image_split),
                        extra_num_tasks=tuple(k for k in dict.fromkeys(extra) if k != a.num_tasks),
                        schema=getattr(a, "schema", 1))


def fact_sort_key(f: tuple[str, str, str]) -> tuple:
    """Facts are sorted by (S, P, O), so ⟨S⟩ precedes ⟨S,P⟩ precedes ⟨S,P,O⟩ of the same S."""
    return tuple(f)


def select_facts(image_facts: Sequence[set], min_images: int, max_image_frac: float,
                 counted: np.ndarray | None = None):
    """Facts seen in >= ``min_images`` and <= ``max_image_frac`` · N of the N counted images, sorted.

    Args:
        counted: bool [len(image_facts)], the images counted (the training images); None: all.
    Returns:
        (facts: list of (S, P, O), counts: Counter fact → counted images, too_frequent: list of
        (fact, images)).
    """
    sets = [fs for i, fs in enumerate(image_facts) if counted is None or counted[i]]
    counts = Counter(f for fs in sets for f in set(fs))
    limit = max_image_frac * len(sets)
    too_frequent = sorted(((f, c) for f, c in counts.items() if c > limit), key=lambda x: -x[1])
    facts = sorted((f for f, c in counts.items() if min_images <= c <= limit), key=fact_sort_key)
    return facts, counts, too_frequent


@dataclass
class BuildReport:
    """What a build did (printed at the end and stored in the provenance)."""
    counts: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)


def assemble(out: str | Path, images: np.ndarray | ImageSource, image_ids: Sequence[str], image_facts: Sequence[set],
             opts: BuildOptions, source: dict, skipped: Sequence[tuple[str, str]],
             timings: dict | None = None, given_splits: dict | None = None) -> BuildReport:
    """Threshold the facts, drop images without a fact, split, and write ``out``.

    Args:
        images: uint8 [N, H, W, 3] of the usable images: an array, or an ``ImageSource``
            (``data_prep.images.scan_images``: decoded a chunk at a time while the file is written,
            never all held).  image_ids: N names.
        image_facts: N sets of (S, P, O) facts (before thresholds).
        source: where the data came from (paths, model), stored in the provenance.
        skipped: (name, reason) of unusable inputs, stored in the provenance.
        given_splits: name -> ({fact: task}, attrs): a fact-to-task assignment that came with the
            data (LFL's task files), written beside the splits drawn here with attrs ``kind``
            "given" plus ``attrs`` (which must hold ``num_tasks``); every kept fact needs a task.
    Raises:
        BuildError: no fact passes the thresholds, or a task gets no training image.
        FileExistsError: ``out`` exists and ``opts.overwrite`` is False.
    """
    n_in = len(image_ids)
    if opts.threshold_images not in THRESHOLD_IMAGES:
        raise BuildError(f"threshold_images {opts.threshold_images!r}; valid: {list(THRESHOLD_IMAGES)}")
    if opts.image_split not in IMAGE_SPLITS:
        raise BuildError(f"image_split {opts.image_split!r}; valid: {list(IMAGE_SPLITS)}")
    split_all = None
    if opts.image_split == "hash":          # from the names alone: before (and whatever) the thresholds
        split_all = hash_image_split(image_ids, opts.fractions)
    elif opts.threshold_images == "train":
        split_all = image_split(n_in, opts.seed, opts.fractions)
    counted = split_all == 0 if opts.threshold_images == "train" else None
    facts, counts, too_frequent = select_facts(image_facts, opts.min_images, opts.max_image_frac, counted)
    n_counted = n_in if counted is None else int(counted.sum())
    if not facts:
        raise BuildError(f"no fact is seen in at least --min-images {opts.min_images} of {n_counted} "
                         f"{'training ' if counted is not None else ''}images (and in at most "
                         f"--max-image-frac {opts.max_image_frac} of them); lower --min-images or use "
                         "more images")
    index = {f: i for i, f in enumerate(facts)}
    keep_img, pairs = [], []
    for i, fs in enumerate(image_facts):
        ids = sorted(index[f] for f in fs if f in index)
        if ids:
            pairs.extend((len(keep_img), j) for j in ids)
            keep_img.append(i)
    pairs_arr = np.asarray(pairs, dtype=np.int32).reshape(-1, 2)
    images = take_images(images, np.asarray(keep_img, np.int64))   # a source: nothing decoded here
    ids_kept = [image_ids[i] for i in keep_img]
    split = (image_split(len(ids_kept), opts.seed, opts.fractions) if split_all is None
             else split_all[keep_img])
    load = train_counts(pairs_arr, split, len(facts))
    splits, attrs = {}, {}
    for s in opts.split_seeds:
        name = f"random{opts.num_tasks}_seed{s}"
        splits[name] = random_split(load, opts.num_tasks, s)
        attrs[name] = {"kind": "random", "seed": s, "num_tasks": opts.num_tasks}
    for k in opts.extra_num_tasks:
        for s in opts.split_seeds:
            name = f"random{k}_seed{s}"
            splits[name] = random_split(load, k, s)
            attrs[name] = {"kind": "random", "seed": s, "num_tasks": k}
    image_tasks = {}
    if opts.disjoint:
        for s in opts.split_seeds:
            source_name, name = f"random{opts.num_tasks}_seed{s}", f"disjoint{opts.num_tasks}_seed{s}"
            splits[name] = splits[source_name].copy()
            image_tasks[name] = disjoint_images(pairs_arr, split, splits[name], opts.num_tasks, s)
            attrs[name] = {"kind": "image_disjoint", "seed": s, "num_tasks": opts.num_tasks,
                           "facts_from": source_name}
    if opts.semantic:
        name = f"semantic{opts.num_tasks}"
        splits[name] = semantic_split([f[0] for f in facts], [f[1] for f in facts], load, opts.num_tasks)
        attrs[name] = {"kind": "semantic", "seed": -1, "num_tasks": opts.num_tasks}
    for name, (fact_task, extra) in (given_splits or {}).items():
        missing = [f for f in facts if f not in fact_task]
        if missing:
            raise BuildError(f"split {name}: no task for fact {missing[0]} (and {len(missing) - 1} more)")
        splits[name] = np.array([fact_task[f] for f in facts], dtype=np.int64)
        attrs[name] = {"kind": "given", **extra}
    disjoint_counts = {}
    for name, task in splits.items():
        task_load = load
        if name in image_tasks:       # training pairs kept: the image's task is the fact's task
            own = image_tasks[name][pairs_arr[:, 0]] == task[pairs_arr[:, 1]]
            task_load = train_counts(pairs_arr[own], split, len(facts))
            disjoint_counts[name] = {
                "train_pairs_kept": int(task_load.sum()), "train_pairs": int(load.sum()),
                "facts_without_training_image": int(((task_load == 0) & (load > 0)).sum()),
                "train_pairs_per_task": [int(task_load[task == t].sum()) for t in range(opts.num_tasks)]}
        check_tasks(name, task, task_load, int(attrs[name]["num_tasks"]))

    order = Counter(1 + bool(f[1]) + bool(f[2]) for f in facts)
    report = BuildReport(skipped=[{"image": n, "reason": r} for n, r in skipped])
    report.counts = {
        "images_in": n_in + len(skipped), "images_skipped": len(skipped), "images_usable": n_in,
        "images_without_fact": n_in - len(keep_img), "images_kept": len(keep_img),
        "image_split": {k: int((split == v).sum()) for v, k in enumerate(("train", "val", "test"))},
        "threshold_images": opts.threshold_images,
        "facts_before_thresholds": len(counts), "facts": len(facts),
        "facts_by_order": {str(k): order.get(k, 0) for k in (1, 2, 3)},
        "facts_too_rare": sum(1 for c in counts.values() if c < opts.min_images),
        "facts_too_frequent": [{"fact": list(f), "images": c} for f, c in too_frequent],
        "pairs": len(pairs_arr),
        "disjoint": disjoint_counts,
    }
    report.splits = {name: [int((t == k).sum()) for k in range(int(attrs[name]["num_tasks"]))]
                     for name, t in splits.items()}
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()}
    prov = run_provenance({"builder": source.get("builder", "data_prep"), "source": source,
                           "options": options, "counts": report.counts, "timings": timings or {},
                           "skipped": report.skipped})
    write_dataset(out, images, ids_kept, split, facts, pairs_arr, splits, attrs, prov,
                  overwrite=opts.overwrite, split_images=image_tasks, schema_version=opts.schema)
    log.info("wrote %s: %d images, %d facts, %d pairs, splits %s", out, len(ids_kept), len(facts),
             len(pairs_arr), sorted(splits))
    return report


def run_build(build, args: argparse.Namespace) -> tuple[int, "BuildReport | None"]:
    """Run a builder's ``build(args)`` as a command: (0, report), or (2, None) after printing the
    message of a bad input (any ValueError — the builders' errors derive from it —, an existing file,
    an unwritable folder), or (130, None) on Ctrl-C (the HDF5 write holds it back, then removes its
    temporary file)."""
    try:
        return 0, build(args)
    except (ValueError, OSError) as e:      # OSError: e.g. --out in a folder that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    except KeyboardInterrupt:
        print(f"interrupted: nothing written to {args.out}", file=sys.stderr)
        return 130, None


def build_command(p: argparse.ArgumentParser, build, argv: list[str] | None) -> tuple[int, "BuildReport | None"]:
    """A builder's command line after its own options: parse ``argv`` with ``p``, set up logging
    (``-q``: warnings only), run ``build(args)`` (``run_build``) and print its report.
    Returns (exit status, report): (0, report), or (2 or 130, None) as ``run_build``."""
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    status, report = run_build(build, args)
    if report is not None:
        print_report(report)
    return status, report


def print_report(report: BuildReport, stream=None) -> None:
    """Human-readable build report (to stderr by default): skipped images with reasons, then counts."""
    stream = stream or sys.stderr
    c = report.counts
    if report.skipped:
        print(f"skipped {len(report.skipped)} image(s):", file=stream)
        for s in report.skipped[:50]:
            print(f"  {s['image']}: {s['reason']}", file=stream)
        if len(report.skipped) > 50:
            print(f"  ... and {len(report.skipped) - 50} more (all listed in the file's provenance)",
                  file=stream)
    print(f"images: {c['images_in']} in, {c['images_skipped']} skipped, {c['images_without_fact']} "
          f"without a kept fact dropped, {c['images_kept']} kept {c['image_split']}", file=stream)
    print(f"facts: {c['facts']} kept of {c['facts_before_thresholds']} (by order {c['facts_by_order']}), "
          f"{c['facts_too_rare']} too rare, {len(c['facts_too_frequent'])} too frequent "
          f"{[tuple(x['fact']) for x in c['facts_too_frequent']]}; pairs: {c['pairs']}", file=stream)
    for name, n in report.splits.items():
        print(f"split {name}: facts per task {n}", file=stream)
    for name, d in c.get("disjoint", {}).items():
        print(f"split {name}: {d['train_pairs_kept']} of {d['train_pairs']} training pairs kept (each "
              f"training image in one task), per task {d['train_pairs_per_task']}; "
              f"{d['facts_without_training_image']} fact(s) left without a training image", file=stream)
