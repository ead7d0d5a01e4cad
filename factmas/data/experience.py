"""Each task's data, built once per run: an *experience* (the word of Avalanche, Lomonaco et al. 2021).

``experiences(data, split)`` gives one ``Experience`` per task of the task split ``split``: its facts,
its (image, fact) pairs and its images per image split (train / val / test), and the relevance index
of the whole dataset (which facts are true for which image). For an image-disjoint split
(``FactData.split_images``) a training image is in the training pairs of its own task only, as in
``FactData.task_pairs``. The trainer reads the training pairs and the Ω batches from it, the evaluation hook the validation pairs, the evaluator each task's test
images; nothing re-derives them.

The *stream* is the list of experiences trained one after another. Sequential continual learning
trains the tasks' experiences in order; joint training (the upper bound) trains ``merge(experiences)``,
one experience holding every task (``factmas.methods.Method.stream``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from factmas.data.dataset import SPLIT_NAMES, FactData


class PairIndex:
    """Membership test "is fact f true for image i?" over a set of (image, fact) pairs.

    Args:
        pairs: int [P, 2] (image, fact) pairs.  num_facts: F (the key is image · F + fact, int64).
    """

    def __init__(self, pairs: np.ndarray, num_facts: int) -> None:
        self.num_facts = int(num_facts)
        self.keys = np.unique(pairs[:, 0].astype(np.int64) * self.num_facts + pairs[:, 1])

    def contains(self, image_idx: np.ndarray, fact_idx: np.ndarray) -> np.ndarray:
        """bool array of the broadcast shape of ``image_idx`` and ``fact_idx`` (int arrays)."""
        q = np.asarray(image_idx, np.int64) * self.num_facts + np.asarray(fact_idx, np.int64)
        if not len(self.keys):
            return np.zeros(q.shape, bool)
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return self.keys[pos] == q

    __call__ = contains

    def positive_matrix(self, image_idx: np.ndarray, fact_idx: np.ndarray) -> np.ndarray:
        """bool [B, B']: entry [i, j] is True when fact ``fact_idx[j]`` is true for image ``image_idx[i]``."""
        return self.contains(np.asarray(image_idx)[:, None], np.asarray(fact_idx)[None, :])


@dataclass
class Experience:
    """The data of one training experience (one task, or several trained together).

    Attributes:
        index: position in the stream (its checkpoint is ``task{index}.pt``, its row of R ``index``).
        tasks: the task ids it holds (0-based).
        facts: int64 [F_e] sorted ids of its facts.
        rows: image split → int64 sorted rows of ``data.pairs`` whose fact is one of ``facts`` and
            whose image is in that image split.
        pairs: image split → int32 [P, 2] (image, fact) pairs, ``data.pairs[rows[split]]`` (dataset order).
        images: image split → int64 sorted ids of the images of that split carrying one of ``facts``.
        relevance: the dataset's ``PairIndex`` (all pairs), shared by every experience.
    """
    index: int
    tasks: list[int]
    facts: np.ndarray
    rows: dict[str, np.ndarray]
    pairs: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    relevance: PairIndex

    @property
    def label(self) -> str:
        """"task{index}": the name of its checkpoint and of its row of R."""
        return f"task{self.index}"


def experience(data: FactData, split: str, tasks: Sequence[int], index: int,
               relevance: PairIndex | None = None) -> Experience:
    """The ``Experience`` of ``tasks`` of ``split``. Raises DatasetError on an unknown split."""
    tasks = [int(t) for t in tasks]
    task_of = data.task_of_facts(split)
    fact_ok = np.isin(task_of, np.asarray(tasks))
    facts = np.flatnonzero(fact_ok).astype(np.int64)
    # image-disjoint split: a training image keeps only its own task's facts (FactData.task_pairs)
    image_task = data.split_images.get(split)
    rows, pairs, images = {}, {}, {}
    for code, which in enumerate(SPLIT_NAMES):
        keep = fact_ok[data.pairs[:, 1]] & (data.image_split[data.pairs[:, 0]] == code)
        if which == "train" and image_task is not None:
            keep &= image_task[data.pairs[:, 0]] == task_of[data.pairs[:, 1]]
        rows[which] = np.flatnonzero(keep).astype(np.int64)
        pairs[which] = data.pairs[rows[which]]
        images[which] = np.unique(pairs[which][:, 0]).astype(np.int64)
    if relevance is None:
        relevance = PairIndex(data.pairs, data.num_facts)
    return Experience(index, tasks, facts, rows, pairs, images, relevance)


def experiences(data: FactData, split: str) -> list[Experience]:
    """One ``Experience`` per task of ``split``, in task order (index = task), sharing one
    relevance index. Raises DatasetError on an unknown split."""
    task_of = data.task_of_facts(split)
    relevance = PairIndex(data.pairs, data.num_facts)
    num_tasks = int(task_of.max()) + 1 if len(task_of) else 0
    return [experience(data, split, [t], t, relevance) for t in range(num_tasks)]


def merge(parts: Sequence[Experience], index: int = 0) -> Experience:
    """One experience holding every part's tasks (joint training), its pairs in dataset order as if
    built for all those tasks at once. Raises ValueError on no parts."""
    if not parts:
        raise ValueError("merge: no experiences to merge")
    rows, pairs, images = {}, {}, {}
    for which in parts[0].rows:
        r = np.concatenate([e.rows[which] for e in parts])
        p = np.concatenate([e.pairs[which] for e in parts])
        order = np.argsort(r, kind="stable")
        rows[which], pairs[which] = r[order], p[order]
        images[which] = np.unique(np.concatenate([e.images[which] for e in parts])).astype(np.int64)
    facts = np.unique(np.concatenate([e.facts for e in parts])).astype(np.int64)
    tasks = sorted({t for e in parts for t in e.tasks})
    return Experience(index, tasks, facts, rows, pairs, images, parts[0].relevance)
