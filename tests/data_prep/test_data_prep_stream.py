"""Builds that do not hold the pixels (issue 28): every image checked once, the kept ones decoded
again a chunk at a time while the file is written; the file equals the one built from all pixels in
memory (``load_images``, the path before)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import flickr8k, images, mining
from factmas.data import image_source

RIDE = "A man is riding a horse ."
RUN = "A dog runs through the grass ."
VOLATILE = ("timings",)        # decode times: the only provenance that differs between two builds


@pytest.fixture(scope="module")
def nlp():
    return mining.load_nlp()


@pytest.fixture(autouse=True)
def _cached_nlp(nlp, monkeypatch):
    monkeypatch.setattr(mining, "load_nlp", lambda: nlp)


@pytest.fixture
def folder(tmp_path):
    """14 photos of two kinds (sizes and modes vary, so the resize path is taken), a corrupt, a
    truncated and a missing file, and one image without a fact."""
    img = tmp_path / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,caption"]
    for i in range(14):
        name = f"{i:02d}.{'png' if i % 3 else 'jpg'}"
        side = 20 + 3 * i
        Image.fromarray(rng.integers(0, 256, (side, side + i, 3), dtype=np.uint8)).save(img / name)
        lines += [f"{name},{RIDE if i % 2 else RUN}"] * 3
    Image.new("L", (30, 30), 9).save(img / "14.jpg")
    lines += ["14.jpg,It is sunny ."] * 3
    (img / "15.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = (img / "00.jpg").read_bytes()
    (img / "16.jpg").write_bytes(good[: len(good) // 2])
    lines += [f"15.jpg,{RIDE}", f"16.jpg,{RUN}", f"17.jpg,{RUN}"]  # 17: listed but missing
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _build(folder, out, *extra):
    return flickr8k.main(["--out", str(out), "--image-size", "12", "--min-images", "2",
                          "--max-image-frac", "1", "--num-tasks", "2", "-q",
                          "--images", str(folder / "images"), "--captions", str(folder / "captions.txt"),
                          *extra])


def test_scan_finds_the_same_images_as_loading_them(folder):
    paths = sorted((folder / "images").iterdir()) + [folder / "images" / "17.jpg"]
    held = images.load_images(paths, 12, progress=False)
    scanned = images.scan_images(paths, 12, progress=False)
    assert scanned.kept.tolist() == held.kept.tolist() and scanned.skipped == held.skipped
    assert {n for n, _ in held.skipped} == {"15.jpg", "16.jpg", "17.jpg"}
    src = scanned.images
    assert isinstance(src, images.FileImages) and len(src) == len(held.images) and src.shape == (12, 12)
    assert np.array_equal(src.chunk(0, len(src)), held.images)
    rows = np.array([9, 2, 2, 0])
    assert np.array_equal(src.take(rows).chunk(0, 4), held.images[rows])
    with pytest.raises(images.StrictImageError, match="15.jpg"):
        images.scan_images(paths, 12, strict=True, progress=False)


@pytest.mark.parametrize("schema", ["1", "2"])
def test_streamed_build_equals_the_build_from_all_pixels(folder, monkeypatch, same_h5, schema):
    monkeypatch.setattr(image_source, "CHUNK_IMAGES", 4)       # 4 does not divide the kept images
    assert _build(folder, folder / "streamed.h5", "--schema", schema) == 0
    with monkeypatch.context() as m:                          # the path before: every pixel held
        m.setattr(flickr8k, "scan_images", images.load_images)
        assert _build(folder, folder / "held.h5", "--schema", schema) == 0
    assert same_h5(folder / "held.h5", folder / "streamed.h5", VOLATILE) >= 15


def test_an_image_gone_before_the_write_is_an_error_and_no_file(folder, monkeypatch, capsys):
    def scan_then_delete(paths, *a, **kw):
        res = images.scan_images(paths, *a, **kw)
        Path(paths[int(res.kept[7])]).unlink()               # readable when checked, not when written
        return res

    monkeypatch.setattr(image_source, "CHUNK_IMAGES", 3)
    monkeypatch.setattr(flickr8k, "scan_images", scan_then_delete)
    assert _build(folder, folder / "out.h5") == 2
    err = capsys.readouterr().err
    assert "missing file" in err and "readable when the images were checked" in err
    assert not [p for p in folder.iterdir() if p.name.startswith((".out.h5", "out.h5"))]


@pytest.mark.realdata
@pytest.mark.slow
def test_real_flickr8k_streamed_equals_held(tmp_path, monkeypatch, same_h5):
    """300 real photos (FACTMAS_FLICKR8K, default /work/shared/flickr8k), both schema versions."""
    root = Path(os.environ.get("FACTMAS_FLICKR8K", "/work/shared/flickr8k"))
    if not (root / "captions.txt").is_file():
        pytest.skip(f"no Flickr8k folder at {root}")
    monkeypatch.setattr(image_source, "CHUNK_IMAGES", 64)     # 64 does not divide the kept images
    for schema in ("1", "2"):
        args = ["--limit-images", "300", "--min-images", "3", "--image-size", "64", "--schema", schema,
                "-q", "--images", str(root / "images"), "--captions", str(root / "captions.txt")]
        assert flickr8k.main(["--out", str(tmp_path / f"s{schema}.h5"), *args]) == 0
        with monkeypatch.context() as m:
            m.setattr(flickr8k, "scan_images", images.load_images)
            assert flickr8k.main(["--out", str(tmp_path / f"h{schema}.h5"), *args]) == 0
        assert same_h5(tmp_path / f"h{schema}.h5", tmp_path / f"s{schema}.h5", VOLATILE) >= 15
