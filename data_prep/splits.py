"""Image splits (train / val / test) and task splits of the facts (random and semantic).

Image split, stable (``hash_image_split``, ``--image-split hash``, the builders' default): each
image's part from a hash of its file name alone, about 0.7 train (0), 0.1 val (1, held-out training
images used to choose λ) and 0.2 test (2), so the split of an image never changes with the fact set,
the thresholds or the other images. Or seeded (``image_split``, ``--image-split seed``, how files were
built before; ``provenance_image_split`` tells which a file has): a seeded permutation of the
images, the first round(0.7 N) train, the next round(0.1 N) val, the rest test.

Task splits give every fact one task in 0..k-1 (tasks are disjoint in facts and cover all facts):

* ``random{k}_seed{s}``: a seeded random partition with equal numbers of facts per task (±1), then
  balanced in training images by local search: while swapping one fact of the heaviest task with one
  of the lightest task narrows the gap between them, do the swap that narrows it most. The load of a
  task is its number of training (image, fact) pairs, i.e. the sum over its facts of their training
  images.
* ``semantic{k}``: facts grouped by subject, as the Lifelong Fact Learning benchmark (Elhoseiny et al.,
  ACCV 2018) groups facts by meaning. A subject group heavier than 1/k of all training pairs (e.g.
  ``person`` in Flickr8k) is divided by predicate, so the ⟨person, ride⟩ and ⟨person, ride, horse⟩
  facts stay together. Groups go, heaviest first, to the task with the lightest load so far (ties by
  task index; group order by load, then name), which needs no seed.
* ``disjoint{k}_seed{s}`` (image-disjoint): the facts' tasks of ``random{k}_seed{s}``, and every
  *training* image in exactly one task, for which it keeps only that task's facts (its other pairs are
  not trained on) — the setting of Lifelong Fact Learning's 6DS, where no image is shown again in a
  later task. Assignment (``disjoint_images``): the training images in a seeded random order, each to
  the task, among those of its own facts, with the fewest training pairs kept so far (ties: the task
  where the image has more facts, then the lower index), so the tasks' training pairs stay balanced.
  Val and test images keep all their facts (-1: no task), so evaluation is the same as for
  ``random{k}_seed{s}``. Stored beside the fact tasks as ``split_images/<name>`` int16 [N].
"""
from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from typing import Sequence

import numpy as np

IMAGE_FRACTIONS = (0.7, 0.1, 0.2)
IMAGE_SPLITS = ("seed", "hash")      # --image-split: seeded permutation or file-name hash
DEFAULT_IMAGE_SPLIT = "hash"         # the builders' default (BuildOptions.image_split)
LEGACY_IMAGE_SPLIT = "seed"          # a data_prep file whose provenance lacks options.image_split
HASH_BUCKETS = 1000


class SplitError(ValueError):
    """A split cannot be made (too few facts or images); the message says which setting to change."""


def image_split(n: int, seed: int = 0, fractions: Sequence[float] = IMAGE_FRACTIONS) -> np.ndarray:
    """int8 [n]: 0 train, 1 val, 2 test for each image, seeded (``np.random.default_rng(seed)``).

    Raises:
        ValueError: fractions not three non-negative numbers summing to 1.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"image split fractions must be 3 numbers >= 0 summing to 1, got {list(fractions)}")
    n_train = int(round(f[0] * n))
    n_val = min(int(round(f[1] * n)), n - n_train)
    labels = np.full(n, 2, dtype=np.int8)
    perm = np.random.default_rng(seed).permutation(n)
    labels[perm[:n_train]] = 0
    labels[perm[n_train:n_train + n_val]] = 1
    return labels


def name_bucket(name: str, buckets: int = HASH_BUCKETS) -> int:
    """Bucket in 0..buckets-1 of an image: the SHA-256 of its file's base name (the part after the
    last '/' or '\\', UTF-8), read as a big-endian integer, modulo ``buckets``. Depends on nothing
    else: the folder, the other images, the facts and the seed do not change it."""
    base = posixpath.basename(name.replace("\\", "/"))
    return int.from_bytes(hashlib.sha256(base.encode("utf-8")).digest(), "big") % buckets


def hash_image_split(names: Sequence[str], fractions: Sequence[float] = IMAGE_FRACTIONS,
                     buckets: int = HASH_BUCKETS) -> np.ndarray:
    """int8 [len(names)]: 0 train, 1 val, 2 test from each name's ``name_bucket`` b: train when
    b < round(f_train · buckets), val when below round((f_train + f_val) · buckets), else test.

    The expected fractions are ``fractions`` (to 1 / buckets); the counts vary binomially around
    them (on Flickr8k's 8,091 names: module README). Raises ValueError as ``image_split``.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"image split fractions must be 3 numbers >= 0 summing to 1, got {list(fractions)}")
    cut_train, cut_val = round(f[0] * buckets), round((f[0] + f[1]) * buckets)
    b = np.fromiter((name_bucket(n, buckets) for n in names), dtype=np.int64, count=len(names))
    return np.where(b < cut_train, 0, np.where(b < cut_val, 1, 2)).astype(np.int8)


def provenance_image_split(provenance: dict) -> str | None:
    """The image split rule a data_prep file was built with, from its provenance (``FactData.provenance``,
    the JSON written by ``data_prep.build.assemble``).

    Returns:
        ``provenance["options"]["image_split"]`` ("hash" or "seed"); ``LEGACY_IMAGE_SPLIT`` ("seed")
        when the options lack the key (files built before ``--image-split`` existed drew the seeded
        permutation, never the later default); None when there are no builder options (a file not
        written by a data_prep builder: unknown).
    Raises:
        ValueError: the recorded value is not one of ``IMAGE_SPLITS``.
    """
    options = provenance.get("options") if isinstance(provenance, dict) else None
    if not isinstance(options, dict):
        return None
    rule = options.get("image_split", LEGACY_IMAGE_SPLIT)
    if rule not in IMAGE_SPLITS:
        raise ValueError(f"provenance options.image_split is {rule!r}; expected one of {list(IMAGE_SPLITS)}")
    return rule


def train_counts(pairs: np.ndarray, image_split_: np.ndarray, num_facts: int) -> np.ndarray:
    """int64 [F]: number of training images (image_split == 0) of each fact. pairs: int [P, 2]."""
    pairs = np.asarray(pairs).reshape(-1, 2)
    train = pairs[image_split_[pairs[:, 0]] == 0]
    return np.bincount(train[:, 1], minlength=num_facts).astype(np.int64)


def random_split(load: np.ndarray, num_tasks: int, seed: int, max_rounds: int = 10000) -> np.ndarray:
    """int16 [F] task of each fact: seeded equal-size partition balanced in ``load`` by swaps.

    Args:
        load: int [F] training images of each fact.  num_tasks: k.  seed: partition seed.
    Raises:
        SplitError: fewer facts than tasks.
    """
    load = np.asarray(load, dtype=np.int64)
    f = len(load)
    if f < num_tasks:
        raise SplitError(f"{f} facts cannot fill {num_tasks} tasks: lower --num-tasks or --min-images")
    rng = np.random.default_rng(seed)
    task = np.empty(f, dtype=np.int16)
    task[rng.permutation(f)] = np.arange(f) % num_tasks
    totals = np.bincount(task, weights=load, minlength=num_tasks).astype(np.int64)
    for _ in range(max_rounds):
        hi, lo = int(np.argmax(totals)), int(np.argmin(totals))
        gap = totals[hi] - totals[lo]
        a = np.flatnonzero(task == hi)
        b = np.flatnonzero(task == lo)
        delta = load[a][:, None] - load[b][None, :]  # moving a→lo and b→hi changes the gap by -2δ
        new_gap = np.abs(gap - 2 * delta)
        i, j = np.unravel_index(np.argmin(new_gap), new_gap.shape)
        if new_gap[i, j] >= gap:
            break
        task[a[i]], task[b[j]] = lo, hi
        totals[hi] -= delta[i, j]
        totals[lo] += delta[i, j]
    return task


def semantic_split(subjects: Sequence[str], predicates: Sequence[str], load: np.ndarray,
                   num_tasks: int) -> np.ndarray:
    """int16 [F] task of each fact: subject groups (big ones divided by predicate), greedy balance.

    Raises:
        SplitError: fewer groups than tasks (the message suggests --num-tasks).
    """
    load = np.asarray(load, dtype=np.int64)
    cap = load.sum() / num_tasks
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(subjects):
        by_subject[s].append(i)
    groups: dict[str, list[int]] = {}
    for s, members in by_subject.items():
        if load[members].sum() > cap:
            for i in members:
                groups.setdefault(f"{s}|{predicates[i]}", []).append(i)
        else:
            groups[s] = members
    if len(groups) < num_tasks:
        raise SplitError(f"only {len(groups)} subject groups for {num_tasks} semantic tasks: "
                         "lower --num-tasks")
    order = sorted(groups, key=lambda g: (-int(load[groups[g]].sum()), g))
    totals = np.zeros(num_tasks, dtype=np.int64)
    task = np.empty(len(load), dtype=np.int16)
    for g in order:
        t = int(np.argmin(totals))
        task[groups[g]] = t
        totals[t] += load[groups[g]].sum()
    return task


def check_tasks(name: str, task: np.ndarray, load: np.ndarray, num_tasks: int) -> None:
    """Raise SplitError when a task of split ``name`` has no fact or no training image."""
    for t in range(num_tasks):
        members = task == t
        if not members.any():
            raise SplitError(f"split {name}: task {t} has no fact; lower --num-tasks or --min-images")
        if load[members].sum() == 0:
            raise SplitError(f"split {name}: task {t} has no training image; lower --num-tasks, "
                             "lower --min-images or use more images")


def disjoint_images(pairs: np.ndarray, image_split_: np.ndarray, fact_task: np.ndarray, num_tasks: int,
                    seed: int) -> np.ndarray:
    """int16 [N] task of each training image for the image-disjoint split (module docstring); -1 for
    val/test images and training images without a fact.

    Args:
        pairs: int [P, 2] (image, fact).  image_split_: int [N] 0/1/2.  fact_task: int [F] task of
        each fact.  num_tasks: k.  seed: order of the images (``np.random.default_rng(seed)``).
    Returns:
        image_task, with image_task[i] in the tasks of image i's facts for every training image i
        that has a fact.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    n = len(image_split_)
    out = np.full(n, -1, dtype=np.int16)
    train = pairs[np.asarray(image_split_)[pairs[:, 0]] == 0]
    # per training image, its number of facts in each task: [N, k]
    per_task = np.zeros((n, num_tasks), np.int64)
    np.add.at(per_task, (train[:, 0], np.asarray(fact_task, np.int64)[train[:, 1]]), 1)
    images = np.flatnonzero(per_task.sum(1) > 0)
    load = np.zeros(num_tasks, np.int64)
    for i in np.random.default_rng(seed).permutation(images):
        cand = np.flatnonzero(per_task[i])
        # fewest pairs so far, then more of this image's facts, then lower index (lexsort: last key first)
        t = int(cand[np.lexsort((cand, -per_task[i, cand], load[cand]))[0]])
        out[i] = t
        load[t] += per_task[i, t]
    return out
