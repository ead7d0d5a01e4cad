"""Whole-schema validation on open (factmas.data.schema via read_dataset), image checksums,
``data_prep.inspect --verify`` and the data fingerprint's pixel coverage."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from factmas.data import dataset as ds
from factmas.data.schema import CHECKSUM_KEY, image_checksums
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.rundir import data_fingerprint, same_fingerprint


@pytest.fixture()
def path(tmp_path):
    return make_synthetic_dataset(tmp_path / "d.h5", n_images=40, image_size=8, num_tasks=2)


def _replace(h, key, data):
    attrs = dict(h[key].attrs)
    del h[key]
    h.create_dataset(key, data=data)
    for k, v in attrs.items():
        h[key].attrs[k] = v


def _shorter(key):
    return lambda h: _replace(h, key, h[key][()][:-1])


def _set(key, index, value):
    def edit(h):
        a = h[key][()]
        a[index] = value
        _replace(h, key, a)
    return edit


# (edit of the file, words the message must contain)
CASES = {
    "image_split shorter": (_shorter("image_split"), ["'image_split'", "'images'", "N = 40"]),
    "image ids shorter": (_shorter("image_ids"), ["'image_ids'", "N = 40"]),
    "order shorter": (_shorter("facts/order"), ["'facts/order'", "'facts/subject'"]),
    "split shorter": (_shorter("splits/random2_seed0"), ["'splits/random2_seed0'"]),
    "images float": (lambda h: _replace(h, "images", h["images"][()].astype(np.float32)),
                     ["'images'", "uint8"]),
    "pairs 3 columns": (lambda h: _replace(h, "pairs", np.zeros((4, 3), np.int32)),
                        ["'pairs'", "[P, 2]"]),
    "negative fact id": (_set("pairs", (0, 1), -1), ["'pairs'", "fact id -1", "expected 0.."]),
    "image id too large": (_set("pairs", (3, 0), 999), ["'pairs'", "image id 999", "0..39"]),
    "task far outside": (_set("splits/random2_seed0", 0, 50), ["'splits/random2_seed0'", "task 50",
                                                              "0..1"]),
    "empty task": (lambda h: _replace(h, "splits/random2_seed0",
                                      np.zeros(h["splits/random2_seed0"].shape, np.int16)),
                   ["'splits/random2_seed0'", "task 1 has no fact"]),
    "image split 7": (_set("image_split", 2, 7), ["'image_split'", "row 2", "is 7"]),
    "order 5": (_set("facts/order", 0, 5), ["'facts/order'", "row 0"]),
    "token out of vocab": (_set("facts/tokens", (1, 0, 0), 10_000), ["'facts/tokens'", "row 1"]),
    "vocab without pad": (_set("vocab", 0, "zebra"), ["'vocab'", "'<pad>'"]),
    "checksums shorter": (_shorter(CHECKSUM_KEY), [f"'{CHECKSUM_KEY}'", "N = 40"]),
    "image_size attr": (lambda h: h.attrs.__setitem__("image_size", 99), ["'image_size'", "99"]),
    "provenance not json": (lambda h: h.attrs.__setitem__("provenance", "{oops"), ["'provenance'"]),
    "no vocab": (lambda h: h.__delitem__("vocab"), ["missing key 'vocab'"]),
    "splits a dataset": (lambda h: (h.__delitem__("splits"), h.create_dataset("splits", data=[1])),
                         ["'splits'"]),
    "split_images shorter": (_shorter("split_images/disjoint2_seed0"),
                             ["'split_images/disjoint2_seed0'", "N = 40"]),
    "test image with a task": (lambda h: _image_task(h, 2, 0), ["'split_images/disjoint2_seed0'",
                                                               "test image", "expected -1"]),
    "training image, task of none of its facts": (
        lambda h: _image_task(h, 0, None), ["'split_images/disjoint2_seed0'", "training image",
                                            "none of its facts"]),
    "split_images without its split": (
        lambda h: (h.copy(h["split_images/disjoint2_seed0"], "split_images/other")),
        ["'split_images/other'", "no task split"]),
}


def _image_task(h, which: int, task):
    """Give the first image of image split ``which`` the task ``task`` (None: a task none of the
    image's facts has) in split_images/disjoint2_seed0."""
    key = "split_images/disjoint2_seed0"
    a = h[key][()]
    i = int(np.flatnonzero(h["image_split"][()] == which)[0])
    if task is None:
        pairs, fact_task = h["pairs"][()], h["splits/disjoint2_seed0"][()]
        mine = set(fact_task[pairs[pairs[:, 0] == i, 1]].tolist())
        task = min(set(range(8)) - mine)
    a[i] = task
    _replace(h, key, a)


@pytest.mark.parametrize("name", sorted(CASES))
def test_inconsistent_file_is_refused_naming_file_and_key(path, name):
    edit, words = CASES[name]
    with h5py.File(path, "a") as h:
        edit(h)
    with pytest.raises(ds.DatasetError) as e:
        ds.read_dataset(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    for w in words:
        assert w in msg, (w, msg)


def test_checksums_written_and_flipped_pixels_found(path, capsys):
    from data_prep import inspect
    d = ds.read_dataset(path)
    assert d.image_crc32 is not None and np.array_equal(d.image_crc32, image_checksums(d.images))
    assert inspect.main([str(path), "--verify"]) == 0
    assert "40 images match" in capsys.readouterr().out
    with h5py.File(path, "a") as h:
        h["images"][7, 3, 4, 1] ^= 0xFF                  # one flipped byte in image 7
    with pytest.raises(ds.DatasetError, match=r"1 of 40 images do not match.*7 \(syn_00007.png\)"):
        ds.read_dataset(path, in_memory=True)
    lazy = ds.read_dataset(path)                         # pixels stay in the file until read
    assert np.array_equal(lazy.images[:7], d.images[:7])
    with pytest.raises(ds.DatasetError, match=r"1 of 3 images read do not match.*7 \(syn_00007.png\)"):
        lazy.images[[9, 7, 8]]
    with pytest.raises(ds.DatasetError, match=r"1 of 40 images do not match.*7 \(syn_00007.png\)"):
        lazy.images.verify_all()
    ds.read_dataset(path, load_images=False)           # the structure is fine
    assert inspect.main([str(path)]) == 0                # summary without reading pixels
    capsys.readouterr()
    assert inspect.main([str(path), "--verify"]) == 2
    assert "syn_00007.png" in capsys.readouterr().err


def test_old_file_without_checksums_is_read(path, capsys):
    from data_prep import inspect
    with h5py.File(path, "a") as h:
        del h[CHECKSUM_KEY]
    d = ds.read_dataset(path)
    assert d.image_crc32 is None and len(d.images) == 40
    assert inspect.main([str(path), "--verify"]) == 0
    assert "none stored" in capsys.readouterr().out


def test_fingerprint_covers_pixels(path):
    a = data_fingerprint(ds.read_dataset(path), "random2_seed0")
    with h5py.File(path, "a") as h:
        h["images"][0, 0, 0, 0] ^= 1
        del h[CHECKSUM_KEY]                              # as if rebuilt from other pixels
    b = data_fingerprint(ds.read_dataset(path), "random2_seed0")
    assert a["sha256"] == b["sha256"] and a["pixels_sha256"] != b["pixels_sha256"]
    assert not same_fingerprint(a, b) and same_fingerprint(a, dict(a))
    old_record = {k: v for k, v in a.items() if k != "pixels_sha256"}   # a run from before
    assert same_fingerprint(old_record, b)


def test_writer_refuses_what_the_reader_would(tmp_path):
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    facts = [("dog", "", ""), ("cat", "", "")]
    with pytest.raises(ds.DatasetError, match="task 1 has no fact"):
        ds.write_dataset(tmp_path / "x.h5", imgs, ["a", "b"], [0, 2], facts, [[0, 0], [1, 1]],
                         {"s": [0, 0]}, {"s": {"num_tasks": 2}})
    with pytest.raises(ds.DatasetError, match="'image_split' row 1 is 5"):
        ds.write_dataset(tmp_path / "x.h5", imgs, ["a", "b"], [0, 5], facts, [[0, 0], [1, 1]],
                         {"s": [0, 1]})
    assert list(tmp_path.iterdir()) == []
