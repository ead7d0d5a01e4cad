"""Issue 27's data options: the stable (file-name hash) image split, the builders' default, beside the
seeded permutation of the older files (``--image-split seed``), and the extra random{k} splits."""
from __future__ import annotations

import argparse
import hashlib
import json

import h5py

import numpy as np
import pytest

from data_prep import splits
from data_prep.build import BuildError, BuildOptions, add_common_args, assemble, options_from_args
from factmas.data.dataset import read_dataset


def test_name_bucket_matches_sha256_by_hand():
    rng = np.random.default_rng(0)
    names = [f"{rng.integers(1e9)}_{rng.integers(1e6)}.jpg" for _ in range(50)] + ["ü-photo.png"]
    for n in names:
        naive = int(hashlib.sha256(n.encode("utf-8")).hexdigest(), 16) % 1000
        assert splits.name_bucket(n) == naive
        assert splits.name_bucket(f"some/folder/{n}") == naive       # the base name only
        assert splits.name_bucket(f"C:\\photos\\{n}") == naive


def test_hash_split_fractions_and_independence_of_the_other_images():
    rng = np.random.default_rng(1)
    names = [f"{i}_{rng.integers(1e9)}.jpg" for i in range(6000)]
    lab = splits.hash_image_split(names)
    assert lab.dtype == np.int8 and lab.shape == (6000,)
    frac = np.bincount(lab, minlength=3) / len(names)
    assert np.allclose(frac, splits.IMAGE_FRACTIONS, atol=0.02)      # binomial: sd ≈ 0.006
    # each image's part depends on its name only: a subset, reordered, keeps every label
    idx = rng.permutation(6000)[:777]
    assert np.array_equal(splits.hash_image_split([names[i] for i in idx]), lab[idx])
    # the cut points follow the fractions
    buckets = np.array([splits.name_bucket(n) for n in names])
    assert np.array_equal(lab, np.select([buckets < 700, buckets < 800], [0, 1], 2))
    lab2 = splits.hash_image_split(names, (0.5, 0.25, 0.25))
    assert np.array_equal(lab2, np.select([buckets < 500, buckets < 750], [0, 1], 2))
    with pytest.raises(ValueError, match="fractions"):
        splits.hash_image_split(names, (0.5, 0.5, 0.5))


def _inputs(n=600, n_facts=40, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"{rng.integers(1e9)}_{i}.jpg" for i in range(n)]
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    # long-tailed fact frequencies, so that the thresholds drop facts and images
    p = 1.0 / np.arange(1, n_facts + 1)
    p /= p.sum()
    facts = [(f"s{j % 9}", f"p{j}" if j >= 9 else "", "") for j in range(n_facts)]
    image_facts = [{facts[j] for j in rng.choice(n_facts, int(rng.integers(1, 4)), replace=False, p=p)}
                   for _ in range(n)]
    return images, names, image_facts


def _build(tmp_path, name, **kw):
    images, names, image_facts = _inputs()
    opts = BuildOptions(**{"image_size": 4, "min_images": 2, "max_image_frac": 1.0, "semantic": False,
                           "disjoint": False, **kw})
    out = tmp_path / f"{name}.h5"
    assemble(out, images, names, image_facts, opts, {"builder": "test"}, [])
    return read_dataset(out)


@pytest.mark.parametrize("threshold_images", ["train", "all"])
def test_changing_the_thresholds_moves_no_image_with_the_default_split(tmp_path, threshold_images):
    """The point of the stable split, on a default build (no image_split given): a stricter fact
    threshold drops facts and images, and moves none of the others between train, val and test."""
    assert BuildOptions().image_split == "hash" == splits.DEFAULT_IMAGE_SPLIT
    loose = _build(tmp_path, "loose", min_images=1, threshold_images=threshold_images)
    strict = _build(tmp_path, "strict", min_images=25, threshold_images=threshold_images)
    assert len(strict.image_ids) < len(loose.image_ids)               # the thresholds dropped images
    assert len(strict.subject) < len(loose.subject)                   # ... and facts
    for d in (loose, strict):                                         # every image: its name's part
        assert np.array_equal(d.image_split, splits.hash_image_split(list(d.image_ids)))
    where = {n: s for n, s in zip(loose.image_ids, loose.image_split)}
    assert all(where[n] == s for n, s in zip(strict.image_ids, strict.image_split))
    assert strict.provenance["options"]["image_split"] == "hash"


def test_the_seeded_split_reshuffles_when_the_thresholds_change(tmp_path):
    """Why the hash split exists: with the seeded permutation over the kept images (the older
    default; threshold_images 'all'), dropping images moves others between train, val and test."""
    loose = _build(tmp_path, "loose", image_split="seed", min_images=1, threshold_images="all")
    strict = _build(tmp_path, "strict", image_split="seed", min_images=25, threshold_images="all")
    where = {n: s for n, s in zip(loose.image_ids, loose.image_split)}
    moved = sum(where[n] != s for n, s in zip(strict.image_ids, strict.image_split))
    assert moved > 0


def test_default_build_is_the_hash_split_and_seed_gives_the_old_permutation(tmp_path):
    a = _build(tmp_path, "a")
    assert np.array_equal(a.image_split, splits.hash_image_split(list(a.image_ids)))
    assert a.provenance["options"]["image_split"] == "hash"
    assert splits.provenance_image_split(a.provenance) == "hash"
    # --image-split seed: the permutation of the older default, over every usable image (the
    # thresholds count training images), then restricted to the kept images
    b = _build(tmp_path, "b", image_split="seed", extra_num_tasks=())
    assert np.array_equal(b.image_split, splits.image_split(600, 0)[_kept(b)])
    assert splits.provenance_image_split(b.provenance) == "seed"
    assert b.splits.keys() == a.splits.keys() == {f"random4_seed{s}" for s in range(3)}
    where = dict(zip(a.image_ids, a.image_split))                     # the two rules do differ here
    assert sum(where[n] != s for n, s in zip(b.image_ids, b.image_split) if n in where) > 50


def _kept(d):
    _, names, _ = _inputs()
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[n] for n in d.image_ids])


def test_random8_splits_are_disjoint_complete_and_balanced(tmp_path):
    d = _build(tmp_path, "r8", extra_num_tasks=(8,), image_split="hash", disjoint=True)
    four = _build(tmp_path, "r4", image_split="hash", disjoint=True)
    n_facts = len(d.subject)
    for s in range(3):
        task = d.splits[f"random8_seed{s}"]
        assert task.shape == (n_facts,)                              # every fact has one task ...
        assert set(task.tolist()) == set(range(8))                   # ... in 0..7, none empty
        sizes = np.bincount(task, minlength=8)
        assert sizes.max() - sizes.min() <= 1
        assert np.array_equal(task, splits.random_split(
            splits.train_counts(d.pairs, d.image_split, n_facts), 8, s))
        # each task has training pairs, and the four-task splits are those of a build without 8
        load = splits.train_counts(d.pairs, d.image_split, n_facts)
        assert all(load[task == t].sum() > 0 for t in range(8))
        assert np.array_equal(d.splits[f"random4_seed{s}"], four.splits[f"random4_seed{s}"])
        assert np.array_equal(d.splits[f"disjoint4_seed{s}"], four.splits[f"disjoint4_seed{s}"])
    assert not np.array_equal(d.splits["random8_seed0"], d.splits["random8_seed1"])
    assert d.provenance["counts"]["image_split"] == four.provenance["counts"]["image_split"]


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_common_args(p, 14, 0.3)
    return p.parse_args(["--out", "x.h5", *argv])


def test_options_from_args():
    o = options_from_args(_parse("--image-split", "hash", "--extra-num-tasks", "8,4,8"))
    assert o.image_split == "hash" and o.extra_num_tasks == (8,)       # 4 is --num-tasks already
    assert options_from_args(_parse()).image_split == "hash"
    assert options_from_args(_parse("--image-split", "seed")).image_split == "seed"
    assert options_from_args(_parse()).extra_num_tasks == ()
    for bad, match in [(("--extra-num-tasks", "eight"), "comma-separated"),
                       (("--extra-num-tasks", "0"), ">= 1"),
                       (("--extra-num-tasks", "8", "--split-seeds", ""), "needs --split-seeds")]:
        with pytest.raises(BuildError, match=match):
            options_from_args(_parse(*bad))
    with pytest.raises(SystemExit):
        _parse("--image-split", "random")


def _set_provenance(path, change):
    with h5py.File(path, "r+") as h:
        prov = json.loads(h.attrs["provenance"])
        h.attrs["provenance"] = json.dumps(change(prov))


def test_a_file_without_the_image_split_option_reads_as_seed(tmp_path, capsys):
    """Files built before --image-split have no options.image_split: they drew the seeded
    permutation, so the provenance reads as "seed", never as the later default "hash"."""
    from data_prep import inspect
    assert splits.provenance_image_split({"options": {"seed": 0, "min_images": 14}}) == "seed"
    assert splits.provenance_image_split({"options": {"image_split": "hash"}}) == "hash"
    assert splits.provenance_image_split({"command": "x"}) is None            # not a data_prep build
    assert splits.provenance_image_split({}) is None
    with pytest.raises(ValueError, match="'random'"):
        splits.provenance_image_split({"options": {"image_split": "random"}})

    _build(tmp_path, "old", image_split="seed")
    old = tmp_path / "old.h5"
    _set_provenance(old, lambda p: {**p, "options": {k: v for k, v in p["options"].items()
                                                     if k != "image_split"}})
    assert "image_split" not in read_dataset(old).provenance["options"]
    assert inspect.main([str(old), "--image-split-rule"]) == 0
    assert capsys.readouterr().out == "seed\n"
    assert inspect.main([str(old)]) == 0
    assert "image split: seed (a permutation drawn with --seed" in capsys.readouterr().out
    _build(tmp_path, "new")
    assert inspect.main([str(tmp_path / "new.h5"), "--image-split-rule"]) == 0
    assert capsys.readouterr().out == "hash\n"
    _set_provenance(old, lambda p: {})
    assert inspect.main([str(old), "--image-split-rule"]) == 0
    assert capsys.readouterr().out == "unknown\n"
    _set_provenance(old, lambda p: {"options": {"image_split": "random"}})
    assert inspect.main([str(old), "--image-split-rule"]) == 2
    err = capsys.readouterr().err
    assert "old.h5" in err and "'random'" in err and "Traceback" not in err
