"""Each task's experience (factmas.data.experience) against the dataset's own per-task queries and a
brute-force relevance check."""
from __future__ import annotations

import numpy as np
import pytest

from factmas.data.dataset import read_dataset
from factmas.data.experience import PairIndex, experiences, merge
from factmas.data.synthetic import make_synthetic_dataset


def test_experiences_equal_the_per_task_queries(tmp_path):
    data = read_dataset(make_synthetic_dataset(tmp_path / "s.h5", n_images=60, image_size=8, num_tasks=3))
    split = "random3_seed0"
    tasks = experiences(data, split)
    assert [(e.index, e.tasks, e.label) for e in tasks] == [(t, [t], f"task{t}") for t in range(3)]
    assert all(e.relevance is tasks[0].relevance for e in tasks)          # built once
    for t, e in enumerate(tasks):
        assert np.array_equal(e.facts, np.flatnonzero(data.task_of_facts(split) == t))
        for which in ("train", "val", "test"):
            pairs = data.task_pairs(split, t, which)
            assert np.array_equal(e.pairs[which], pairs)
            assert np.array_equal(data.pairs[e.rows[which]], pairs)
            assert np.array_equal(e.images[which], np.unique(pairs[:, 0]))
    with pytest.raises(ValueError, match="no experiences"):
        merge([])
    with pytest.raises(Exception, match="unknown split"):
        experiences(data, "nope")


def test_pair_index_equals_a_set_lookup(rng):
    pairs = rng.integers(0, 20, size=(50, 2))
    index = PairIndex(pairs, num_facts=20)
    truth = {(int(i), int(f)) for i, f in pairs}
    img, fact = rng.integers(0, 20, 200), rng.integers(0, 20, 200)
    assert index.contains(img, fact).tolist() == [(int(i), int(f)) in truth for i, f in zip(img, fact)]
    m = index.positive_matrix(img[:7], fact[:5])
    assert m.shape == (7, 5) and m[2, 3] == ((int(img[2]), int(fact[3])) in truth)
    assert not PairIndex(np.zeros((0, 2), np.int64), 20).contains(img, fact).any()
