"""Image decoding (data_prep.images): mode conversion to RGB, resizing, and the corrupt-image path."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep import images


def _save(path, mode, value, size=(20, 12), **kw):
    Image.new(mode, size, value).save(path, **kw)
    return path


@pytest.mark.parametrize("mode,value,fmt,expect", [
    ("L", 100, "PNG", (100, 100, 100)),
    ("RGB", (10, 200, 30), "PNG", (10, 200, 30)),
    ("RGBA", (10, 200, 30, 0), "PNG", (10, 200, 30)),  # alpha dropped, as at query time
    ("LA", (77, 255), "PNG", (77, 77, 77)),
    ("CMYK", (0, 0, 0, 0), "JPEG", (255, 255, 255)),
    ("I;16", 65535, "PNG", (255, 255, 255)),
])
def test_modes_become_rgb(tmp_path, mode, value, fmt, expect):
    p = _save(tmp_path / f"x.{fmt.lower()}", mode, value, format=fmt)
    a = images.load_rgb(p, 8)
    assert a.dtype == np.uint8 and a.shape == (8, 8, 3)
    assert np.abs(a.astype(int) - np.array(expect)).max() <= 2


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    a = images.load_rgb(tmp_path / "p.png", 4)
    assert a.shape == (4, 4, 3) and tuple(a[0, 0]) == (250, 10, 10)


def test_resize_matches_pil_bicubic(tmp_path):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(src).save(tmp_path / "r.png")
    ref = np.asarray(Image.fromarray(src).resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(images.load_rgb(tmp_path / "r.png", 16), ref)


def test_bad_files_are_skipped_with_reasons(tmp_path):
    good = _save(tmp_path / "good.jpg", "RGB", (1, 2, 3), format="JPEG")
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "dir.jpg").mkdir()
    paths = [good, tmp_path / "missing.jpg", tmp_path / "trunc.jpg", tmp_path / "text.jpg",
             tmp_path / "dir.jpg", good]
    res = images.load_images(paths, 6, progress=False)
    assert res.kept.tolist() == [0, 5] and res.images.shape == (2, 6, 6, 3)
    reasons = dict(res.skipped)
    assert reasons["missing.jpg"] == "missing file"
    assert reasons["trunc.jpg"].startswith(("truncated", "corrupt"))
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["dir.jpg"] == "not a regular file"
    with pytest.raises(images.StrictImageError, match="trunc.jpg"):
        images.load_images(paths[2:], 6, strict=True, progress=False)


def test_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="size"):
        images.load_rgb(_save(tmp_path / "a.png", "RGB", 0), 0)
