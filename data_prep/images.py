"""Image files → uint8 RGB arrays of one size, with a reason for every file that cannot be used.

Every image goes through ``factmas.data.imageio.load_image``, the one loader of factmas (query time uses it
too): pixel limit, EXIF orientation, RGB conversion of any mode (16-bit grayscale scaled by
255/65535, alpha dropped), bicubic resize to ``size`` × ``size`` (no crop).

The builders do not hold the decoded pixels (issue 28): ``scan_images`` decodes every file once to
find the unusable ones (the same full decode as before, so the same files are skipped for the same
reasons, truncated ones included: a header check would not see those) and keeps only their paths;
its ``images`` is a ``FileImages``, which decodes the kept files again, a chunk at a time, while
``factmas.data.dataset.write_dataset`` writes them. Each image is decoded twice, by the same
``load_image`` call, so the pixels written are the ones ``load_images`` gives. ``load_images``
(every pixel in one array) stays for small sets and tests.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from factmas.data.image_source import ImageSource

log = logging.getLogger(__name__)


class ImageSkip(Exception):
    """An image file that cannot be used; ``str(e)`` is the reason written to the build report."""


class StrictImageError(ValueError):
    """Raised under ``--strict`` for the first image that cannot be used (names file and reason)."""


class ImageChangedError(ValueError):
    """An image that was usable when ``scan_images`` checked it cannot be read when it is written
    (the file changed or went away in between); names the file and the reason. Nothing is written."""


def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """Read one image file as uint8 [size, size, 3] RGB with ``factmas.data.imageio.load_image`` (the loader
    queries use too).

    Raises:
        ImageSkip: the file is missing, unreadable, truncated, not an image or too large (the reason
            is the message).
        ValueError: ``size`` < 1.
    """
    from factmas.data.imageio import ImageError, load_image

    try:
        return load_image(path, size)
    except ImageError as e:
        raise ImageSkip(e.reason) from None


@dataclass
class DecodeResult:
    """Images decoded by :func:`load_images`.

    Attributes:
        images: uint8 [K, size, size, 3] of the K usable files, in input order: an array
            (``load_images``) or a ``FileImages`` decoding them on demand (``scan_images``).
        kept: int64 [K] index of each usable file in the input list.
        skipped: (name, reason) of each unusable file.
        seconds: wall time of decoding.  rate: files per second.
    """
    images: np.ndarray | FileImages
    kept: np.ndarray
    skipped: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        n = len(self.kept) + len(self.skipped)
        return n / self.seconds if self.seconds > 0 else float("nan")


def load_images(paths: Sequence[str | Path], size: int, strict: bool = False,
                progress: bool = True) -> DecodeResult:
    """Decode ``paths`` to uint8 [K, size, size, 3]; unusable files are skipped with their reason.

    Raises:
        StrictImageError: ``strict`` and a file cannot be used (the message names it and the reason).
    """
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def keep(k: int, image: np.ndarray) -> None:
        out[k] = image

    kept, skipped, seconds = _decode_each(paths, size, strict, progress, keep)
    return DecodeResult(images=out[: len(kept)].copy() if len(kept) < len(paths) else out,
                        kept=np.asarray(kept, dtype=np.int64), skipped=skipped, seconds=seconds)


def _decode_each(paths: Sequence[str | Path], size: int, strict: bool, progress: bool,
                 keep) -> tuple[list[int], list[tuple[str, str]], float]:
    """Decode each of ``paths`` in full (``load_rgb``), calling ``keep(k, image)`` with the k-th
    usable image; returns (indices of the usable files, (name, reason) of the others, seconds).

    Raises:
        StrictImageError: ``strict`` and a file cannot be used.
    """
    from factmas.progress import progress_bar

    kept, skipped = [], []
    t0 = time.perf_counter()
    for i, p in enumerate(progress_bar(paths, desc="decoding images", unit="img", enabled=progress,
                                       mininterval=1.0)):
        try:
            image = load_rgb(p, size)
        except ImageSkip as e:
            if strict:
                raise StrictImageError(f"{p}: {e} (--strict)") from None
            log.warning("skipping image %s: %s", p, e)
            skipped.append((Path(p).name, str(e)))
            continue
        keep(len(kept), image)
        kept.append(i)
    return kept, skipped, time.perf_counter() - t0


class FileImages(ImageSource):
    """Image files as an ``ImageSource`` of uint8 [K, size, size, 3]: ``chunk(start, stop)`` decodes
    files start..stop-1 with ``load_rgb`` (``factmas.data.imageio.load_image``, the same pixels as
    ``load_images``). ``take(rows)`` gives the files of ``rows`` (nothing decoded). With
    ``progress``, a "writing images" bar counts the files decoded from row 0 to the last.

    Raises (from ``chunk``): ImageChangedError naming a file that cannot be read any more.
    """

    def __init__(self, paths: Sequence[str | Path], size: int, progress: bool = False) -> None:
        self.paths, self.size, self.progress = list(paths), int(size), progress
        self.shape = (self.size, self.size)
        self._bar = None

    def __len__(self) -> int:
        return len(self.paths)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        from factmas.progress import progress_bar

        if start == 0 or self._bar is None:
            self._bar = progress_bar(total=len(self), desc="writing images", unit="img",
                                     enabled=self.progress, mininterval=1.0)
        out = np.empty((max(stop - start, 0), self.size, self.size, 3), np.uint8)
        for i, p in enumerate(self.paths[start:stop]):
            try:
                out[i] = load_rgb(p, self.size)
            except ImageSkip as e:
                self._bar.close()
                raise ImageChangedError(f"{p}: {e}; it was readable when the images were checked "
                                        "before writing (changed since?); nothing was written") from None
        self._bar.update(len(out))
        if stop >= len(self):
            self._bar.close()
        return out

    def take(self, rows: np.ndarray) -> "FileImages":
        return FileImages([self.paths[int(r)] for r in np.asarray(rows).reshape(-1)], self.size,
                          self.progress)


def scan_images(paths: Sequence[str | Path], size: int, strict: bool = False,
                progress: bool = True) -> DecodeResult:
    """Find the usable files of ``paths`` as ``load_images`` does (each decoded in full by
    ``load_rgb``, its pixels then dropped); ``images`` is a ``FileImages`` of the K usable files,
    decoded again when written (module docstring).

    Raises:
        StrictImageError: ``strict`` and a file cannot be used (the message names it and the reason).
    """
    kept, skipped, seconds = _decode_each(paths, size, strict, progress, lambda k, image: None)
    return DecodeResult(images=FileImages([paths[i] for i in kept], size, progress),
                        kept=np.asarray(kept, dtype=np.int64), skipped=skipped, seconds=seconds)
