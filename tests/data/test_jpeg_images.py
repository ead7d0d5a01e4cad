"""Schema version 2 (issue 28): images stored as JPEG bytes, read lazily or whole, equal to Pillow's own
encode → decode of each image; everything but the pixels equal to the version-1 file; damaged bytes,
a wrong layout and a wrong checksum named; ``data_prep --schema 2``; a training run reads it through
DataLoader workers."""
from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import factmas.data.dataset as ds
from factmas.config import RunConfig
from factmas.data.jpeg_images import JpegImages, decode_jpeg, encode_jpeg
from factmas.data.lazy_images import H5Images
from factmas.data.synthetic import make_synthetic_dataset


def _smooth_images(n, size, rng):
    """Photos are smooth: gradients plus a little noise (JPEG is meant for them, not for white noise)."""
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * x, b * y, c * (1 - x) * y], -1)
        out[i] = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    return out


def _rewrite(src, dst, schema_version, images=None, **kw):
    d = ds.read_dataset(src, in_memory=True)
    ds.write_dataset(dst, d.images if images is None else images, d.image_ids, d.image_split,
                     list(zip(d.subject, d.predicate, d.object)), d.pairs, d.splits, d.split_attrs,
                     d.provenance, split_images=d.split_images, schema_version=schema_version, **kw)
    return dst


@pytest.fixture()
def files(tmp_path, rng):
    syn = make_synthetic_dataset(tmp_path / "syn.h5", n_images=30, image_size=48, num_tasks=2)
    images = _smooth_images(30, 48, rng)
    return images, _rewrite(syn, tmp_path / "v1.h5", 1, images), _rewrite(syn, tmp_path / "v2.h5", 2, images)


def _pil_round_trip(img, quality=95):
    """The naive reference: Pillow's encode (quality, 4:2:0) and decode of one image."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_version_2_reads_pillows_round_trip_lazily_and_whole(files):
    images, v1, v2 = files
    lazy, whole, old = ds.read_dataset(v2), ds.read_dataset(v2, in_memory=True), ds.read_dataset(v1)
    assert isinstance(lazy.images, JpegImages) and type(old.images) is H5Images
    assert isinstance(whole.images, np.ndarray) and whole.images.shape == images.shape
    want = np.stack([_pil_round_trip(im) for im in images])
    assert np.array_equal(whole.images, want)
    idx = np.array([7, 3, 3, 29, 0])
    assert np.array_equal(lazy.images[idx], want[idx]) and np.array_equal(lazy.images[5:9], want[5:9])
    assert np.array_equal(old.images[:], images)                   # version 1 keeps the pixels
    diff = np.abs(want.astype(int) - images.astype(int))
    assert 0 < diff.mean() < 4                                     # lossy, but close on smooth images
    for key in ("image_ids", "subject", "predicate", "object", "vocab"):
        assert getattr(lazy, key) == getattr(old, key), key
    for key in ("image_split", "order", "tokens", "pairs"):
        assert np.array_equal(getattr(lazy, key), getattr(old, key)), key
    assert all(np.array_equal(lazy.splits[k], old.splits[k]) for k in old.splits)
    assert v2.stat().st_size < v1.stat().st_size
    with h5py.File(v2, "r") as h:
        assert h.attrs["schema_version"] == 2 and h["images"].attrs["encoding"] == "jpeg"
        assert h["images"].attrs["jpeg_quality"] == 95
        crc = h["image_crc32"][()]
    import zlib
    assert [zlib.crc32(np.ascontiguousarray(im)) for im in want] == crc.tolist()   # of the pixels read


def test_encode_decode_check_their_inputs():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        encode_jpeg(img[..., 0])
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(img, 0)
    blob = encode_jpeg(img)
    assert decode_jpeg(blob, (8, 8, 3)).shape == (8, 8, 3)
    with pytest.raises(ValueError, match=r"decodes to \(8, 8, 3\), expected \(9, 9, 3\)"):
        decode_jpeg(blob, (9, 9, 3))
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(np.frombuffer(b"\xff\xd8junk", np.uint8), (8, 8, 3))
    with pytest.raises(ValueError, match="schema_version"):
        ds.write_dataset("x.h5", np.zeros((1, 8, 8, 3), np.uint8), ["a"], [0], [("a", "", "")],
                         [[0, 0]], {"s": [0]}, schema_version=3)


def test_damaged_bytes_are_named_by_file_and_row(files):
    _, _, v2 = files
    with h5py.File(v2, "a") as h:
        h["images"][4] = np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8)
    d = ds.read_dataset(v2)
    assert d.images[3].shape == (48, 48, 3)                        # the other rows still read
    with pytest.raises(ds.DatasetError, match=r"v2\.h5: key 'images' row 4: not a decodable JPEG"):
        d.images[2:6]
    with pytest.raises(ds.DatasetError, match="row 4"):
        ds.read_dataset(v2, in_memory=True)


def test_a_changed_checksum_is_an_error_naming_the_image(files):
    _, _, v2 = files
    with h5py.File(v2, "a") as h:
        h["image_crc32"][6] ^= 1
    d = ds.read_dataset(v2)
    with pytest.raises(ds.DatasetError, match="do not match their checksum"):
        d.images[6]
    assert d.images[7].shape == (48, 48, 3)


def test_a_version_2_file_without_jpeg_bytes_is_refused(files):
    _, v1, _ = files
    with h5py.File(v1, "a") as h:
        h.attrs["schema_version"] = 2
    with pytest.raises(ds.DatasetError, match=r"v1\.h5: key 'images' is uint8 \(30, 48, 48, 3\); schema "
                                              "version 2 expects variable-length uint8"):
        ds.read_dataset(v1)


def test_a_version_2_file_without_image_size_is_refused(files):
    _, _, v2 = files
    with h5py.File(v2, "a") as h:
        del h.attrs["image_size"]
    with pytest.raises(ds.DatasetError, match="attribute 'image_size'"):
        ds.read_dataset(v2)


def test_data_prep_writes_version_2_on_request(tmp_path):
    from data_prep import from_csv
    root = tmp_path / "img"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, im in enumerate(_smooth_images(12, 16, rng)):
        Image.fromarray(im).save(root / f"im{i:02d}.png")
        s = ["dog", "cat"][i % 2]
        rows += [f"im{i:02d}.png,{s},,", f"im{i:02d}.png,{s},sit on,"]
    csv = tmp_path / "a.csv"
    csv.write_text("image,S,P,O\n" + "\n".join(rows) + "\n")
    common = ["--csv", str(csv), "--image-root", str(root), "--image-size", "16", "--min-images", "1",
              "--num-tasks", "2", "--split-seeds", "0", "--no-semantic", "-q"]
    assert from_csv.main(common + ["--out", str(tmp_path / "v1.h5")]) == 0
    assert from_csv.main(common + ["--out", str(tmp_path / "v2.h5"), "--schema", "2"]) == 0
    a, b = ds.read_dataset(tmp_path / "v1.h5"), ds.read_dataset(tmp_path / "v2.h5")
    assert type(a.images) is H5Images and isinstance(b.images, JpegImages)
    assert np.array_equal(b.images[:], np.stack([_pil_round_trip(im) for im in a.images[:]]))
    assert b.provenance["options"]["schema"] == 2 and a.provenance["options"]["schema"] == 1
    with pytest.raises(SystemExit):
        from_csv.main(common + ["--out", str(tmp_path / "v3.h5"), "--schema", "3"])


def test_a_run_trains_on_version_2_through_workers(files, tmp_path):
    _, _, v2 = files
    from factmas.run.checkpoint import last_path, load_checkpoint
    from factmas.trainer import train
    states = {}
    for workers in (0, 2):
        out = tmp_path / f"run{workers}"
        cfg = RunConfig.from_dict({
            "data": str(v2), "out": str(out),
            "model": {"backbone": "small_cnn", "width": 8, "embed_dim": 8, "word_dim": 8,
                      "fact_hidden": 16, "norm_groups": 4},
            "train": {"split": "random2_seed0", "method": "mas", "epochs": 1, "batch_size": 8,
                      "num_workers": workers, "threads": 1},
            "eval": {"embed_batch": 8, "calibrate": False}})
        torch.manual_seed(0)
        train(cfg, progress=False)
        assert "retrieval" in (out / "metrics.jsonl").read_text()
        states[workers] = (json.loads((out / "results.json").read_text()), load_checkpoint(last_path(out)))
    (r0, s0), (r2, s2) = states[0], states[2]
    assert {k for k in r0 if r0[k] != r2[k]} <= {"run_name", "timing"}
    assert r0["run_name"] != r2["run_name"] and "R" in json.dumps(r0)
    assert all(torch.equal(v, s2["method"][k]) for k, v in s0["method"].items())
