"""Image and task splits (data_prep.splits): disjoint, complete, deterministic, balanced."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from data_prep import splits


def test_image_split_fractions_and_seed():
    n = 1003
    a = splits.image_split(n, seed=3)
    assert a.dtype == np.int8 and a.shape == (n,)
    assert [(a == k).sum() for k in range(3)] == [round(0.7 * n), round(0.1 * n), n - round(0.7 * n) - round(0.1 * n)]
    assert np.array_equal(a, splits.image_split(n, seed=3))
    assert not np.array_equal(a, splits.image_split(n, seed=4))
    with pytest.raises(ValueError, match="fractions"):
        splits.image_split(10, fractions=(0.5, 0.5, 0.5))


def test_train_counts_matches_loop():
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, 50, 300), rng.integers(0, 12, 300)], 1)
    pairs = np.unique(pairs, axis=0)
    split = rng.integers(0, 3, 50).astype(np.int8)
    naive = np.zeros(12, int)
    for i, f in pairs:
        naive[f] += split[i] == 0
    assert np.array_equal(splits.train_counts(pairs, split, 12), naive)


def _gap(task, load, k):
    totals = np.bincount(task, weights=load, minlength=k)
    return totals.max() - totals.min()


@pytest.mark.parametrize("seed", range(5))
def test_random_split_disjoint_complete_equal_sized(seed):
    rng = np.random.default_rng(100 + seed)
    f, k = int(rng.integers(8, 80)), int(rng.integers(2, 6))
    load = rng.integers(1, 500, f)
    task = splits.random_split(load, k, seed)
    assert task.shape == (f,) and task.dtype == np.int16
    assert set(task.tolist()) == set(range(k))  # every fact in exactly one of the k tasks
    sizes = np.bincount(task, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    assert np.array_equal(task, splits.random_split(load, k, seed))  # deterministic


def test_random_split_seeds_differ_and_balance_beats_random():
    rng = np.random.default_rng(7)
    load = (rng.pareto(1.5, 200) * 30 + 20).astype(int)  # long tail like mined facts
    k = 4
    tasks = [splits.random_split(load, k, s) for s in range(3)]
    assert not np.array_equal(tasks[0], tasks[1]) and not np.array_equal(tasks[1], tasks[2])
    naive_gaps = []
    for s in range(20):  # plain seeded equal-size random partitions
        t = np.empty(200, int)
        t[np.random.default_rng(s).permutation(200)] = np.arange(200) % k
        naive_gaps.append(_gap(t, load, k))
    for t in tasks:
        assert _gap(t, load, k) <= min(naive_gaps)
        # local optimum: no swap between the heaviest and lightest task narrows their gap
        totals = np.bincount(t, weights=load, minlength=k)
        hi, lo = totals.argmax(), totals.argmin()
        gap = totals[hi] - totals[lo]
        for a, b in itertools.product(np.flatnonzero(t == hi), np.flatnonzero(t == lo)):
            assert abs(gap - 2 * (load[a] - load[b])) >= gap


def test_random_split_too_few_facts():
    with pytest.raises(splits.SplitError, match="--num-tasks"):
        splits.random_split(np.ones(3, int), 4, 0)


def test_semantic_split_groups_by_subject_and_balances():
    rng = np.random.default_rng(1)
    subjects, predicates, load = [], [], []
    for s in ["dog", "bird", "car", "horse", "cat", "boat"]:
        for p in ["", "run", "sit", "jump on"][: int(rng.integers(1, 5))]:
            subjects.append(s), predicates.append(p), load.append(int(rng.integers(5, 60)))
    load = np.array(load)
    task = splits.semantic_split(subjects, predicates, load, 3)
    assert set(task.tolist()) == {0, 1, 2}
    for s in set(subjects):  # no group is heavier than 1/k here, so subjects stay whole
        assert len({task[i] for i in range(len(subjects)) if subjects[i] == s}) == 1
    group_load = max(load[[i for i in range(len(load)) if subjects[i] == s]].sum() for s in set(subjects))
    assert _gap(task, load, 3) <= group_load  # greedy-to-lightest bound
    assert np.array_equal(task, splits.semantic_split(subjects, predicates, load, 3))


def test_semantic_split_divides_a_dominant_subject_by_predicate():
    subjects = ["person"] * 6 + ["dog", "dog"]
    predicates = ["", "ride", "ride", "sit", "sit", "walk", "", "run"]
    objects_load = np.array([50, 40, 30, 40, 30, 60, 30, 20])
    task = splits.semantic_split(subjects, predicates, objects_load, 2)
    assert task[1] == task[2] and task[3] == task[4]  # ⟨person, ride⟩ with ⟨person, ride, horse⟩
    assert task[6] == task[7]  # dog not dominant: kept whole
    assert len(set(task[:6].tolist())) == 2  # person spread over both tasks


def test_semantic_split_needs_enough_groups():
    with pytest.raises(splits.SplitError, match="--num-tasks"):
        splits.semantic_split(["dog", "dog"], ["", "run"], np.array([5, 5]), 4)


def test_check_tasks_names_the_setting():
    with pytest.raises(splits.SplitError, match="no training image"):
        splits.check_tasks("random2_seed0", np.array([0, 1], np.int16), np.array([3, 0]), 2)
    with pytest.raises(splits.SplitError, match="no fact"):
        splits.check_tasks("x", np.array([0, 0], np.int16), np.array([3, 1]), 2)


def _random_pairs(rng, n, f):
    pairs = np.unique(np.stack([rng.integers(0, n, 6 * n), rng.integers(0, f, 6 * n)], 1), axis=0)
    return pairs


@pytest.mark.parametrize("seed", range(3))
def test_disjoint_images_one_task_per_training_image(seed):
    rng = np.random.default_rng(200 + seed)
    n, f, k = 300, 30, 4
    pairs = _random_pairs(rng, n, f)
    split = splits.image_split(n, seed)
    task = splits.random_split(splits.train_counts(pairs, split, f), k, seed)
    img = splits.disjoint_images(pairs, split, task, k, seed)
    assert img.shape == (n,) and img.dtype == np.int16
    assert (img[split != 0] == -1).all()                              # val/test keep all their facts
    for i in np.flatnonzero(split == 0):                              # naive: per image, its facts' tasks
        mine = set(task[pairs[pairs[:, 0] == i, 1]].tolist())
        assert (img[i] in mine) if mine else img[i] == -1
    assert np.array_equal(img, splits.disjoint_images(pairs, split, task, k, seed))   # deterministic
    # balanced: the kept training pairs per task closer than assigning each image to a random one of its tasks
    kept = pairs[(split[pairs[:, 0]] == 0) & (img[pairs[:, 0]] == task[pairs[:, 1]])]
    loads = np.bincount(task[kept[:, 1]], minlength=k)
    naive_gaps = []
    for s in range(10):
        r = np.random.default_rng(s)
        alt = np.full(n, -1)
        for i in np.flatnonzero(split == 0):
            mine = sorted(set(task[pairs[pairs[:, 0] == i, 1]].tolist()))
            if mine:
                alt[i] = r.choice(mine)
        kept_alt = pairs[(split[pairs[:, 0]] == 0) & (alt[pairs[:, 0]] == task[pairs[:, 1]])]
        la = np.bincount(task[kept_alt[:, 1]], minlength=k)
        naive_gaps.append(la.max() - la.min())
    assert loads.max() - loads.min() <= np.median(naive_gaps)


def test_select_facts_counts_only_the_counted_images():
    from data_prep.build import select_facts
    a, b, c = ("a", "", ""), ("b", "", ""), ("c", "", "")
    # a: 3 training images; b: 1 training + 3 test images; c: in every training image
    image_facts = [{a, c}, {a, b, c}, {a, c}, {c}, {b}, {b}, {b}]
    train = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    facts, counts, too_frequent = select_facts(image_facts, 2, 0.8, train)
    assert facts == [a] and counts == {a: 3, b: 1, c: 4} and too_frequent == [(c, 4)]
    facts_all, counts_all, _ = select_facts(image_facts, 2, 0.8)          # over all: the test images vote
    assert facts_all == [a, b, c] and counts_all[b] == 4
