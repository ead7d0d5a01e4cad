"""Schema v1 round trip of factmas.data.dataset (write_dataset / read_dataset) and its error paths."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from factmas.data import dataset as ds
from factmas.data.synthetic import make_synthetic_dataset


def _random_dataset(rng, n=30, size=8):
    subjects = ["person", "dog", "bird"]
    preds = ["", "ride", "run through", "sit in front of"]
    objs = ["horse", "grass", "big red bench"]
    facts = set()
    while len(facts) < 12:
        s = subjects[rng.integers(3)]
        p = preds[rng.integers(4)]
        o = objs[rng.integers(3)] if p and rng.random() < 0.5 else ""
        facts.add((s, p, o))
    facts = sorted(facts)
    pairs = np.stack([rng.integers(0, n, 80), rng.integers(0, len(facts), 80)], 1)
    return dict(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                image_ids=[f"img_{i:03d}.jpg" for i in range(n)],
                image_split=rng.integers(0, 3, n).astype(np.int8), facts=facts, pairs=pairs,
                splits={"random2_seed0": rng.integers(0, 2, len(facts)),
                        "semantic2": np.array([subjects.index(f[0]) % 2 for f in facts])},
                split_attrs={"random2_seed0": {"kind": "random", "seed": 0, "num_tasks": 2},
                             "semantic2": {"kind": "semantic", "seed": -1, "num_tasks": 2}},
                provenance={"source": "test", "counts": {"images": n}})


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    d = _random_dataset(rng)
    path = tmp_path / "d.h5"
    ds.write_dataset(path, **d)
    r = ds.read_dataset(path)
    assert np.array_equal(r.images, d["images"]) and r.images.dtype == np.uint8
    assert r.image_ids == d["image_ids"]
    assert np.array_equal(r.image_split, d["image_split"])
    assert list(zip(r.subject, r.predicate, r.object)) == d["facts"]
    assert r.order.tolist() == [1 + bool(p) + bool(o) for _, p, o in d["facts"]]
    assert np.array_equal(r.pairs, np.unique(d["pairs"], axis=0))  # deduplicated and sorted
    for name, t in d["splits"].items():
        assert np.array_equal(r.splits[name], t) and r.splits[name].dtype == np.int16
        assert r.split_attrs[name] == d["split_attrs"][name]
    assert r.provenance == d["provenance"]
    assert r.vocab[0] == ds.PAD
    # tokens spell the slot words back (naive decode)
    for f, fact in enumerate(d["facts"]):
        for s in range(3):
            words = [r.vocab[i] for i in r.tokens[f, s] if i]
            assert " ".join(words) == fact[s]
    with h5py.File(path) as h:
        assert h.attrs["schema_version"] == ds.SCHEMA_VERSION and h.attrs["image_size"] == 8
        assert json.loads(h.attrs["provenance"])["source"] == "test"


def test_task_pairs_matches_loop(tmp_path):
    d = ds.read_dataset(make_synthetic_dataset(tmp_path / "s.h5", n_images=60, image_size=8))
    task = d.task_of_facts("random2_seed0")
    got = d.task_pairs("random2_seed0", 1, "test")
    naive = [p for p in d.pairs.tolist() if task[p[1]] == 1 and d.image_split[p[0]] == 2]
    assert got.tolist() == naive
    with pytest.raises(ds.DatasetError, match="unknown split"):
        d.task_of_facts("nope")


def test_disjoint_split_trains_each_image_with_one_task(tmp_path):
    d = ds.read_dataset(make_synthetic_dataset(tmp_path / "s.h5", n_images=80, image_size=8, num_tasks=3))
    name = "disjoint3_seed0"
    task, image_task = d.task_of_facts(name), d.split_images[name]
    assert d.split_attrs[name]["kind"] == "image_disjoint"
    for t in range(3):
        got = d.task_pairs(name, t, "train").tolist()
        naive = [p for p in d.pairs.tolist() if task[p[1]] == t and d.image_split[p[0]] == 0
                 and image_task[p[0]] == t]
        assert got == naive and got
        # val and test images keep every fact of the task (evaluated as in the random split)
        for which in ("val", "test"):
            assert d.task_pairs(name, t, which).tolist() == d.task_pairs("random3_seed0", t, which).tolist()
    # the experiences the trainer reads hold the same pairs (factmas.data.experience)
    from factmas.data.experience import experiences, merge
    exps = experiences(d, name)
    for t in range(3):
        assert exps[t].pairs["train"].tolist() == d.task_pairs(name, t, "train").tolist()
        assert exps[t].pairs["test"].tolist() == d.task_pairs(name, t, "test").tolist()
    assert len(merge(exps).pairs["train"]) == sum(len(d.task_pairs(name, t)) for t in range(3))
    # every training image in exactly one task
    seen = np.concatenate([np.unique(d.task_pairs(name, t, "train")[:, 0]) for t in range(3)])
    assert len(seen) == len(np.unique(seen)) == int((d.image_split == 0).sum())
    # the random split with the same facts' tasks re-shows images: more training pairs
    assert sum(len(d.task_pairs("random3_seed0", t)) for t in range(3)) > \
        sum(len(d.task_pairs(name, t)) for t in range(3))


def test_overwrite_refused_and_errors_leave_no_file(tmp_path):
    rng = np.random.default_rng(1)
    d = _random_dataset(rng)
    path = tmp_path / "d.h5"
    ds.write_dataset(path, **d)
    with pytest.raises(FileExistsError, match="--overwrite"):
        ds.write_dataset(path, **d)
    bad = dict(d, splits={"random2_seed0": np.zeros(3)})  # wrong length: fails mid-write
    with pytest.raises(ds.DatasetError, match="split"):
        ds.write_dataset(tmp_path / "bad.h5", **bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]  # no partial or temporary file


@pytest.mark.parametrize("facts,match", [
    ([("", "ride", "")], "non-empty S"),
    ([("dog", "", "ball")], "O but no P"),
    ([("dog", "a b c d e", "")], "more than"),
])
def test_bad_facts(tmp_path, facts, match):
    with pytest.raises(ds.DatasetError, match=match):
        ds.write_dataset(tmp_path / "x.h5", np.zeros((1, 4, 4, 3), np.uint8), ["a"], [0], facts,
                         np.zeros((0, 2)), {"t": np.zeros(len(facts))})


def test_read_errors_name_file_and_key(tmp_path):
    with pytest.raises(ds.DatasetError, match="no such dataset file"):
        ds.read_dataset(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(ds.DatasetError, match="not a readable HDF5"):
        ds.read_dataset(tmp_path / "junk.h5")
    path = make_synthetic_dataset(tmp_path / "s.h5", n_images=20, image_size=8)
    with h5py.File(path, "a") as h:
        del h["pairs"]
    with pytest.raises(ds.DatasetError, match="'pairs'"):
        ds.read_dataset(path)
    with h5py.File(path, "a") as h:
        h.attrs["schema_version"] = 3                      # 2 is read since issue 28 (JPEG bytes)
    with pytest.raises(ds.DatasetError, match="schema_version 3 .attribute 'schema_version'.*reads 1 and 2"):
        ds.read_dataset(path)
