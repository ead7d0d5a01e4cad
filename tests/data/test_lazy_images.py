"""``H5Images`` (factmas.data.lazy_images): lazy reads equal numpy indexing of the whole array,
checksums are verified as rows are read, and the object survives pickling and fork."""
from __future__ import annotations

import multiprocessing as mp
import pickle

import h5py
import numpy as np
import pytest

from factmas.data import dataset as ds
from factmas.data import lazy_images
from factmas.data.lazy_images import H5Images
from factmas.data.synthetic import make_synthetic_dataset


@pytest.fixture()
def path(tmp_path):
    return make_synthetic_dataset(tmp_path / "d.h5", n_images=37, image_size=8, num_tasks=2)


@pytest.fixture()
def pair(path):
    """(lazy dataset, the same pixels as one numpy array read straight from the file)."""
    with h5py.File(path, "r") as h:
        full = h["images"][()]
    return ds.read_dataset(path), full


def test_read_dataset_gives_lazy_images_with_array_attributes(pair):
    data, full = pair
    im = data.images
    assert isinstance(im, H5Images) and not isinstance(im, np.ndarray)
    assert (im.shape, im.dtype, im.ndim, len(im), im.size, im.nbytes) == (
        full.shape, full.dtype, full.ndim, len(full), full.size, full.nbytes)
    assert repr(im.shape) == repr(full.shape)          # the feature cache key hashes repr(shape)
    assert np.array_equal(np.asarray(im), full) and np.asarray(im).dtype == np.uint8
    assert np.array_equal(np.stack(list(im)), full)    # iteration, block by block


def test_in_memory_and_lazy_agree(path, pair):
    data, full = pair
    mem = ds.read_dataset(path, in_memory=True)
    assert isinstance(mem.images, np.ndarray) and np.array_equal(mem.images, full)
    assert np.array_equal(mem.pairs, data.pairs) and mem.image_ids == data.image_ids


def test_random_index_patterns_equal_numpy(pair, rng):
    data, full = pair
    n = len(full)
    keys = [0, n - 1, -1, -n, np.int64(5), slice(None), slice(3, 9), slice(9, 3), slice(-5, None),
            slice(None, None, -1), slice(1, 30, 4), slice(30, 1, -3), slice(100, 200),
            [], np.array([], np.int64), [3], [4, 4, 4], np.array([[1, 2], [2, 1]]),
            rng.random(n) < 0.4, (slice(2, 6), 1), (3, slice(None), 0), (np.array([5, 1]), 0, 0)]
    for _ in range(25):
        k = int(rng.integers(1, 3 * n))
        keys.append(rng.integers(-n, n, k))                      # unsorted, repeated, negative
        keys.append(rng.permutation(n)[: int(rng.integers(1, n))].astype(np.int32))
        lo = int(rng.integers(-n, n))
        keys.append(slice(lo, lo + int(rng.integers(0, n)), int(rng.choice([1, 2, 3, -1, -2]))))
    for key in keys:
        want = full[key if not isinstance(key, list) else np.asarray(key, np.int64)]
        got = data.images[key]
        assert isinstance(got, np.ndarray) and got.dtype == np.uint8, key
        assert got.shape == want.shape and np.array_equal(got, want), key


def test_bad_indices_raise_like_numpy(pair):
    data, full = pair
    n = len(full)
    for key in (n, -n - 1, [0, n], np.array([-n - 1])):
        with pytest.raises(IndexError):
            full[key]
        with pytest.raises(IndexError, match="out of bounds"):
            data.images[key]
    with pytest.raises(IndexError):
        data.images[np.array([0.5])]
    with pytest.raises(IndexError, match="boolean index"):
        data.images[np.ones(n + 1, bool)]
    with pytest.raises(TypeError, match="read-only"):
        data.images[0] = 0


def test_corrupt_image_caught_whichever_way_it_is_read(path):
    with h5py.File(path, "a") as h:
        h["images"][11, 2, 2, 0] ^= 0x01                 # one flipped bit in image 11
    for read in (lambda im: im[11], lambda im: im[5:20], lambda im: im[[30, 11, 2, 11]],
                 lambda im: im[-26], lambda im: np.asarray(im), lambda im: list(im),
                 lambda im: im.verify_all()):
        data = ds.read_dataset(path)                     # fresh: nothing verified yet
        data.images[:11]                                 # rows before it read fine
        with pytest.raises(ds.DatasetError, match=r"d\.h5.*11 \(syn_00011\.png\)"):
            read(data.images)
    unchecked = ds.read_dataset(path, verify=False)      # asked not to verify: reads the bad row
    assert unchecked.images[11].shape == (8, 8, 3)


def test_rows_verified_once_per_process(pair, monkeypatch):
    data, _ = pair
    calls = []
    real = lazy_images.schema.verify_checksums
    monkeypatch.setattr(lazy_images.schema, "verify_checksums",
                        lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    data.images[[3, 1, 3]]
    data.images[0:5]
    data.images[4]
    assert calls == [2, 3]                                # rows 1, 3; then 0, 2, 4; then none


def test_file_without_checksums_read_unverified(path):
    with h5py.File(path, "a") as h:
        del h["image_crc32"]
    data = ds.read_dataset(path)
    assert data.images.crc32 is None and data.images.verify_all() == 0
    assert data.images[3].shape == (8, 8, 3)


def test_no_handle_held_so_the_file_can_be_written(path):
    data = ds.read_dataset(path)
    first = data.images[0].copy()
    with h5py.File(path, "a") as h:                      # HDF5 refuses this while a handle is open
        h.attrs["note"] = "edited"
    assert np.array_equal(data.images[0], first)


def test_moved_file_is_a_clear_error(path):
    data = ds.read_dataset(path)
    path.rename(path.with_suffix(".moved"))
    with pytest.raises(ds.DatasetError, match="cannot reopen the dataset"):
        data.images[0]


def test_pickles_without_pixels(pair):
    data, full = pair
    blob = pickle.dumps(data.images)
    assert len(blob) < full.nbytes // 2 + 2000            # path, shape, checksums: no pixels
    again = pickle.loads(blob)
    assert np.array_equal(again[[5, 2]], full[[5, 2]])


def _child_read(images, idx, queue):
    queue.put(images[idx].tolist())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reads_in_a_child_process(pair, method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} here")
    data, full = pair
    data.images[:4]                                      # the parent has read before forking
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(data.images, [9, 0, 9], queue))
    p.start()
    got = np.array(queue.get(timeout=60), np.uint8)
    p.join(60)
    assert p.exitcode == 0 and np.array_equal(got, full[[9, 0, 9]])


def test_checksums_of_lazy_images_equal_computed_ones_and_catch_damage(path, pair):
    from factmas.data.schema import image_checksums
    data, full = pair
    assert np.array_equal(image_checksums(data.images), image_checksums(full))
    with h5py.File(path, "a") as h:
        del h["image_crc32"]
    assert np.array_equal(image_checksums(ds.read_dataset(path).images), image_checksums(full))
    make_synthetic_dataset(path, n_images=37, image_size=8, num_tasks=2)       # checksums again
    with h5py.File(path, "a") as h:
        h["images"][30, 0, 0, 0] ^= 0x80
    with pytest.raises(ds.DatasetError, match=r"1 of 37 images do not match.*30 \(syn_00030\.png\)"):
        image_checksums(ds.read_dataset(path).images)
