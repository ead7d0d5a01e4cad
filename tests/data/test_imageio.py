"""The one image loader (factmas.data.imageio): dataset building and queries agree on every kind of file;
bit depth, EXIF orientation, palette, CMYK, alpha, and the pixel limit against decompression bombs."""
from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from data_prep import images as build_images
from factmas.data import imageio
from factmas.model import load_image_file


def _gray16(path, value):
    Image.fromarray(np.full((6, 10), value, np.uint16)).save(path)
    return path


def _kinds(tmp_path):
    out = {"gray16.png": _gray16(tmp_path / "gray16.png", 65535)}
    for name, mode, value, fmt in (("rgb.png", "RGB", (10, 200, 30), "PNG"),
                                   ("rgba.png", "RGBA", (10, 200, 30, 0), "PNG"),
                                   ("cmyk.jpg", "CMYK", (0, 255, 0, 0), "JPEG"),
                                   ("l.jpg", "L", 90, "JPEG"), ("one.png", "1", 1, "PNG")):
        Image.new(mode, (10, 6), value).save(tmp_path / name, format=fmt)
        out[name] = tmp_path / name
    pal = Image.new("P", (10, 6), 1)
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    out["pal.png"] = tmp_path / "pal.png"
    return out


def test_build_and_query_load_every_kind_identically(tmp_path):
    for name, path in _kinds(tmp_path).items():
        a, b = build_images.load_rgb(path, 8), load_image_file(path, 8)
        assert a.dtype == np.uint8 and a.shape == (8, 8, 3), name
        assert np.array_equal(a, b), name


@pytest.mark.parametrize("value, mean", [(65535, 255.0), (32768, 128.0), (0, 0.0)])
def test_16_bit_grayscale_scales_by_bit_depth(tmp_path, value, mean):
    a = imageio.load_image(_gray16(tmp_path / "g.png", value), 4)
    assert abs(a.mean() - mean) <= 0.5


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 10))                # left half blue when stored
    exif = Image.Exif()
    exif[0x0112] = 6                                     # "rotate 90° clockwise to display"
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    a = imageio.load_image(tmp_path / "o.jpg", 20)
    # displayed upright: 10 wide, 20 high, blue on top (resized to a square: top half blue)
    assert a[2, 10, 2] > 200 and a[2, 10, 0] < 60 and a[17, 10, 0] > 200


def _png_header_only(path, w, h):
    """A tiny PNG whose header claims w × h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    t0 = time.perf_counter()
    with pytest.raises(imageio.ImageError, match=r"bomb.png: too large: .*decompression bomb"):
        imageio.load_image(bomb, 8)
    medium = _png_header_only(tmp_path / "medium.png", 10_000, 10_000)   # under Pillow's own limit
    with pytest.raises(imageio.ImageError, match=r"medium.png: too large: 10000x10000 = 100,000,000"):
        imageio.load_image(medium, 8)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(build_images.ImageSkip, match="too large"):
        build_images.load_rgb(bomb, 8)
    with pytest.raises(ValueError, match="too large"):
        load_image_file(bomb, 8)


def test_pixel_limit_is_a_parameter(tmp_path):
    Image.new("RGB", (30, 30)).save(tmp_path / "a.png")
    assert imageio.load_image(tmp_path / "a.png", 4, max_pixels=900).shape == (4, 4, 3)
    with pytest.raises(imageio.ImageError, match="above the limit of 899"):
        imageio.load_image(tmp_path / "a.png", 4, max_pixels=899)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    Image.new("RGB", (4000, 3000), (40, 80, 120)).save(tmp_path / "big.jpg", quality=80)
    t0 = time.perf_counter()
    a = imageio.load_image(tmp_path / "big.jpg", 64)
    assert time.perf_counter() - t0 < 2.0
    assert a.shape == (64, 64, 3) and np.abs(a.astype(int) - (40, 80, 120)).max() <= 3


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size(tmp_path, size):
    Image.new("RGB", (3, 3)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="size"):
        imageio.load_image(tmp_path / "a.png", size)
