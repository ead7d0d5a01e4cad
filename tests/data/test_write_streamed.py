"""write_dataset from an ImageSource (images a chunk at a time, issue 28) against the array path."""
from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from factmas.data import image_source
from factmas.data.dataset import read_dataset, write_dataset
from factmas.data.image_source import ArrayImages, ImageSource, TakenImages, iter_chunks, take_images
from factmas.data.jpeg_images import decode_jpeg, encode_jpeg
from factmas.data.schema import DatasetError


class Recorded(ImageSource):
    """The rows of ``images`` given by chunks, each call recorded; ``fail_at``: the row whose chunk
    raises (an image that cannot be decoded mid-way)."""

    def __init__(self, images, fail_at=None):
        self.images, self.fail_at, self.calls = images, fail_at, []
        self.shape = images.shape[1:3]

    def __len__(self):
        return len(self.images)

    def chunk(self, start, stop):
        self.calls.append((start, stop))
        if self.fail_at is not None and start <= self.fail_at < stop:
            raise ValueError(f"image {self.fail_at}: cannot be decoded")
        return self.images[start:stop].copy()


def _inputs(rng, n=11, size=8):
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, : size // 2] //= 4                       # some structure, so JPEG is not all noise
    facts = [("dog", "", ""), ("dog", "run", ""), ("dog", "run", "grass"), ("cat", "", "")]
    pairs = np.stack([np.arange(n), rng.integers(0, len(facts), n)], 1)
    pairs = np.concatenate([pairs, [[i, 0] for i in range(len(facts))]])  # every fact has an image
    split = np.arange(n) % 3
    task = np.array([0, 1, 0, 1])
    return dict(image_ids=[f"im{i}.jpg" for i in range(n)], image_split=split, facts=facts,
                pairs=pairs, splits={"random2_seed0": task},
                split_attrs={"random2_seed0": {"kind": "random", "seed": 0, "num_tasks": 2}},
                provenance={"source": "test"}, split_images={"random2_seed0": np.where(split == 0, task[
                    pairs[:n, 1]], -1)}), images


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("chunk", [1, 3, 4, 11, 50])        # 3 and 4 do not divide N = 11
def test_source_writes_the_same_file_as_the_array(tmp_path, rng, monkeypatch, same_h5, version, chunk):
    meta, images = _inputs(rng)
    write_dataset(tmp_path / "array.h5", images, schema_version=version, **meta)
    monkeypatch.setattr(image_source, "CHUNK_IMAGES", chunk)
    src = Recorded(images)
    write_dataset(tmp_path / "source.h5", src, schema_version=version, **meta)
    assert same_h5(tmp_path / "array.h5", tmp_path / "source.h5") >= 12
    # one pass, in order, `chunk` rows at a time
    n = len(images)
    assert src.calls == [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    # against per-image references: the stored bytes, the checksums of what readers decode
    with h5py.File(tmp_path / "source.h5") as h:
        crc = h["image_crc32"][()]
        if version == 1:
            assert np.array_equal(h["images"][()], images)
            assert crc.tolist() == [zlib.crc32(im.tobytes()) for im in images]
        else:
            blobs = h["images"][()]
            assert all(np.array_equal(b, encode_jpeg(im)) for b, im in zip(blobs, images))
            assert crc.tolist() == [zlib.crc32(decode_jpeg(b, im.shape).tobytes())
                                    for b, im in zip(blobs, images)]
    data = read_dataset(tmp_path / "source.h5", in_memory=True)     # verifies every checksum
    assert data.images.shape == images.shape


@pytest.mark.parametrize("version", [1, 2])
def test_decode_failure_mid_way_leaves_no_file(tmp_path, rng, monkeypatch, version):
    meta, images = _inputs(rng)
    monkeypatch.setattr(image_source, "CHUNK_IMAGES", 3)
    out = tmp_path / "d.h5"
    with pytest.raises(ValueError, match="image 7: cannot be decoded"):
        write_dataset(out, Recorded(images, fail_at=7), schema_version=version, **meta)
    assert list(tmp_path.iterdir()) == []                          # neither the file nor its temp
    # an existing file is left as it was
    write_dataset(out, images, schema_version=version, **meta)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="image 7"):
        write_dataset(out, Recorded(images, fail_at=7), schema_version=version, overwrite=True, **meta)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def test_metadata_is_checked_before_any_image_is_asked_for(tmp_path, rng):
    meta, images = _inputs(rng)
    src = Recorded(images[:-1])                                    # one image fewer than the ids
    with pytest.raises(DatasetError, match="10 images but 11 ids"):
        write_dataset(tmp_path / "d.h5", src, **meta)
    bad = dict(meta, splits={"random2_seed0": np.array([0, 0, 0, 0])})    # task 1 empty
    src = Recorded(images)
    with pytest.raises(DatasetError):
        write_dataset(tmp_path / "d.h5", src, **bad)
    assert src.calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["dtype", "rows", "size"])
def test_a_chunk_of_the_wrong_shape_is_an_error_and_no_file(tmp_path, rng, monkeypatch, bad):
    meta, images = _inputs(rng)
    monkeypatch.setattr(image_source, "CHUNK_IMAGES", 4)

    class Wrong(Recorded):
        def chunk(self, start, stop):
            px = super().chunk(start, stop)
            if start >= 8:
                px = {"dtype": px.astype(np.float32), "rows": px[:-1], "size": px[:, :-1]}[bad]
            return px

    with pytest.raises(DatasetError, match=r"rows 8\.\.10; expected uint8 \(3, 8, 8, 3\)"):
        write_dataset(tmp_path / "d.h5", Wrong(images), **meta)
    assert list(tmp_path.iterdir()) == []


def test_array_checks_and_taken_rows(rng):
    with pytest.raises(DatasetError, match=r"uint8 \[N, H, W, 3\]"):
        ArrayImages(np.zeros((2, 4, 4), np.uint8))
    images = rng.integers(0, 256, (9, 4, 5, 3), dtype=np.uint8)
    src = Recorded(images)
    assert src.shape == (4, 5)
    for rows in ([0, 2, 3, 5], [8, 1, 1, 4], [3, 4, 5, 6], []):
        rows = np.array(rows, np.int64)
        taken = take_images(src, rows)
        assert isinstance(taken, TakenImages) and len(taken) == len(rows)
        got = np.concatenate([c for _, _, c in iter_chunks(taken, size=3)] or [images[:0]])
        assert np.array_equal(got, images[rows])
        assert np.array_equal(take_images(images, rows), images[rows])   # arrays: as before
    with pytest.raises(IndexError):
        src.take(np.array([9]))
    with pytest.raises(ValueError, match="chunk size"):
        list(iter_chunks(src, size=0))


def test_v2_free_space_is_estimated_from_the_first_chunk_and_checked_per_chunk(tmp_path, rng, monkeypatch):
    from factmas.data import dataset
    meta, images = _inputs(rng)
    monkeypatch.setattr(image_source, "CHUNK_IMAGES", 4)
    calls = []

    def check_room(path, nbytes):
        calls.append(nbytes)
        if len(calls) == 3:                         # the disk fills before the third chunk
            raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(dataset, "check_room", check_room)
    with pytest.raises(OSError, match="No space"):
        write_dataset(tmp_path / "d.h5", Recorded(images), schema_version=2, **meta)
    assert list(tmp_path.iterdir()) == []
    sizes = [len(encode_jpeg(im)) + 16 for im in images]
    assert calls[1] == sum(sizes[4:8])              # the second chunk's own bytes
    first = sum(sizes[:4]) * len(images) // 4       # the estimate: the first chunk's bytes × N / 4
    assert first < calls[0] < first + 2 ** 21       # plus ids, pairs, tokens and 1 MiB
