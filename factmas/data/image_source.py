"""Images handed to ``write_dataset`` a chunk at a time, so that a dataset is written without holding
its pixels (issue 28).

``write_dataset`` used to take the images as one uint8 [N, H, W, 3] array: 150 KB per 224-px image,
16 GB for Visual Genome's 108k images, held while the file was written. It now also takes an
``ImageSource``: anything with ``len(source)`` = N, ``source.shape`` = (H, W) and
``source.chunk(start, stop)`` → uint8 [stop - start, H, W, 3], the images of rows start..stop-1.
The writer asks for ``CHUNK_IMAGES`` rows at a time, in increasing order, each row once, and
computes each chunk's checksums before asking for the next, so at most one chunk of pixels (plus
its JPEG bytes in schema version 2) is in memory.

- ``ImageSource``: the base class (``take(rows)`` for a subset in a given order).
- ``ArrayImages``: an array (numpy, or anything indexable by row slices, e.g. ``H5Images``) seen as a
  source; what ``write_dataset`` does with an array.
- ``TakenImages``: the rows ``rows`` of another source, in that order (``take``).
- ``as_source``, ``take_images`` and ``iter_chunks``: what the writer and the builders use.

The builders' source (``data_prep.images.FileImages``) decodes image files a chunk at a time with
the same loader as before (``factmas.data.imageio.load_image``), so the pixels written are the same.

May import: numpy, ``factmas.data.schema``.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from factmas.data.schema import DatasetError

#: rows per chunk the writer asks for (256 × 150 KB = 38 MB of pixels at 224 px)
CHUNK_IMAGES = 256


class ImageSource:
    """uint8 [N, H, W, 3] RGB images given a chunk at a time (module docstring).

    Subclasses set ``shape`` = (H, W) and define ``__len__`` (N) and ``chunk(start, stop)``.
    """

    shape: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        raise NotImplementedError

    def chunk(self, start: int, stop: int) -> np.ndarray:
        """uint8 [stop - start, H, W, 3]: the images of rows start..stop-1 (0 <= start <= stop <= N).

        Raises: whatever makes an image unavailable, with a message naming it (the writer lets it
        through, and the file is not written)."""
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> "ImageSource":
        """The images of ``rows`` (int [K], any order, repeats allowed) as a source of K images."""
        return TakenImages(self, rows)


class ArrayImages(ImageSource):
    """An array of images as a source. ``images``: uint8 [N, H, W, 3], a numpy array or anything
    with ``dtype``, ``shape`` and row slicing (``H5Images``). Raises DatasetError (naming ``where``)
    when it is not uint8 [N, H, W, 3]."""

    def __init__(self, images: Any, where: Any = "images") -> None:
        if not hasattr(images, "dtype") or not hasattr(images, "shape"):
            images = np.asarray(images)
        shape = tuple(images.shape)
        if np.dtype(images.dtype) != np.uint8 or len(shape) != 4 or shape[3] != 3:
            raise DatasetError(f"{where}: images must be uint8 [N, H, W, 3], got {images.dtype} {shape}")
        self.images = images
        self.shape = (int(shape[1]), int(shape[2]))

    def __len__(self) -> int:
        return len(self.images)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.images[start:stop])

    def take(self, rows: np.ndarray) -> ImageSource:
        if isinstance(self.images, np.ndarray):          # the old behaviour: one fancy-indexed copy
            return ArrayImages(self.images[np.asarray(rows, np.int64)])
        return TakenImages(self, rows)


class TakenImages(ImageSource):
    """Rows ``rows`` (int [K]) of ``base``, in that order; a chunk reads the base rows it needs in one
    ``base.chunk`` call over their span when they are increasing, else one row at a time.
    Raises IndexError when a row is outside 0..len(base)-1."""

    def __init__(self, base: ImageSource, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(base)):
            raise IndexError(f"rows must be in 0..{len(base) - 1}, got {rows.min()}..{rows.max()}")
        self.base, self.rows, self.shape = base, rows, base.shape

    def __len__(self) -> int:
        return len(self.rows)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        rows = self.rows[start:stop]
        if not len(rows):
            return np.zeros((0, *self.shape, 3), np.uint8)
        if np.all(np.diff(rows) > 0) and rows[-1] - rows[0] < 4 * len(rows):   # a dense span
            lo = int(rows[0])
            return self.base.chunk(lo, int(rows[-1]) + 1)[rows - lo]
        return np.concatenate([self.base.chunk(int(r), int(r) + 1) for r in rows])


def as_source(images: Any, where: Any = "images") -> ImageSource:
    """``images`` itself when it is an ``ImageSource``, else ``ArrayImages(images)`` (DatasetError
    naming ``where`` when it is not uint8 [N, H, W, 3])."""
    return images if isinstance(images, ImageSource) else ArrayImages(images, where)


def take_images(images: Any, rows: np.ndarray) -> Any:
    """``images[rows]`` for an array (a copy, as before), ``images.take(rows)`` for a source."""
    if isinstance(images, ImageSource):
        return images.take(rows)
    return images[rows]


def iter_chunks(source: ImageSource, where: Any = "images",
                size: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, uint8 [stop - start, H, W, 3]) over the rows of ``source``, ``size`` rows
    (default ``CHUNK_IMAGES``, read when called) at a time, in order.

    Raises DatasetError (naming ``where`` and the rows) when a chunk is not uint8 [stop - start, H,
    W, 3] of the source's ``shape``; lets through what ``source.chunk`` raises."""
    size = CHUNK_IMAGES if size is None else int(size)
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    n = len(source)
    h, w = source.shape
    for start in range(0, n, size):
        stop = min(start + size, n)
        px = source.chunk(start, stop)
        if not isinstance(px, np.ndarray) or px.dtype != np.uint8 or px.shape != (stop - start, h, w, 3):
            got = f"{px.dtype} {px.shape}" if isinstance(px, np.ndarray) else type(px).__name__
            raise DatasetError(f"{where}: the image source gave {got} for rows {start}..{stop - 1}; "
                               f"expected uint8 {(stop - start, h, w, 3)}")
        yield start, stop, px
