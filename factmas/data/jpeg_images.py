"""Schema version 2 of the dataset file: each image stored as JPEG bytes, decoded on read (issue 28).

Version 1 stores uint8 [N, H, W, 3] rows (150 KB per 224 px image: 136 GB at 906k images). Version
2 stores ``images`` as a variable-length uint8 dataset [N], one JPEG file's bytes per image (quality
``JPEG_QUALITY``, 4:2:0 chroma subsampling, Pillow): 0.13 × the bytes of version 1 on Flickr8k at 224
px (19.8 KB per image), decoded at about 1.1–1.3 ms per image on one core, 4.5–5.5 × the time of a
raw row read (``bench/schema_v2.py``, ``bench/results/schema_v2.json``, docs/benchmarks.md § 4.2).
JPEG is lossy: the pixels differ from the source's (mean |Δ| 1.05, PSNR 44.6 dB on Flickr8k), so a
version-2 file gives other features and figures than a version-1 file of the same photos; version 1
stays the default of ``data_prep``.

``image_crc32`` holds the CRC-32 of each image's *decoded* pixels, as in version 1: what is checked is
what the model sees, so a file damaged on disk, or a JPEG decoder that decodes differently from the
one that wrote the file, is an error naming the image, never a silent change of the results.

``JpegImages`` is ``H5Images`` (``factmas.data.lazy_images``: rows on demand, opened per read, fork-
and pickle-safe, checksums on first read) whose rows are decoded from their JPEG bytes.

May import: numpy, PIL, ``factmas.data.lazy_images``, ``factmas.data.schema``.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from factmas.data.lazy_images import H5Images
from factmas.data.schema import DatasetError

#: JPEG quality of version-2 files (95: PSNR 44.6 dB, 0.13 × the bytes of raw rows on Flickr8k)
JPEG_QUALITY = 95


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """uint8 [H, W, 3] RGB → the bytes of a baseline JPEG (Pillow, ``quality``, 4:2:0) as uint8 [n].

    Raises ValueError: not uint8 [H, W, 3], or ``quality`` outside 1..100."""
    from PIL import Image
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_jpeg: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"encode_jpeg: quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    return np.frombuffer(buf.getvalue(), np.uint8)


def decode_jpeg(blob: np.ndarray | bytes, shape: tuple[int, ...]) -> np.ndarray:
    """JPEG bytes → uint8 ``shape`` = (H, W, 3) RGB (Pillow).

    Raises ValueError: undecodable bytes or an image of another size (the caller names the file and
    the row)."""
    from PIL import Image
    data = blob.tobytes() if isinstance(blob, np.ndarray) else bytes(blob)
    try:
        with Image.open(io.BytesIO(data)) as im:
            out = np.asarray(im.convert("RGB"))
    except Exception as e:                  # Pillow raises OSError, SyntaxError, ... on bad bytes
        raise ValueError(f"not a decodable JPEG ({type(e).__name__}: {e})") from None
    if out.shape != tuple(shape):
        raise ValueError(f"decodes to {out.shape}, expected {tuple(shape)}")
    return out


class JpegImages(H5Images):
    """uint8 [N, H, W, 3] images of a version-2 dataset file (JPEG bytes per row), decoded on read.

    Arguments and indexing as ``H5Images``; ``shape`` is the decoded (N, H, W, 3).
    Raises (on reading): DatasetError naming the file and the row when a row's bytes cannot be
        decoded or decode to another size; as ``H5Images`` otherwise.
    """

    def __repr__(self) -> str:
        return f"JpegImages({self.path!r}, key={self.key!r}, shape={self.shape}, uint8, JPEG)"

    def _read_into(self, h: Any, out: np.ndarray, lo: int, hi: int, at: int) -> None:
        try:
            blobs = h[lo:hi]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"{self.path}: key {self.key!r} rows {lo}..{hi - 1} cannot be read "
                               f"(corrupt file?): {e}") from e
        for i, blob in enumerate(blobs):
            try:
                out[at + i] = decode_jpeg(blob, self.shape[1:])
            except ValueError as e:
                raise DatasetError(f"{self.path}: key {self.key!r} row {lo + i}: {e}") from None
