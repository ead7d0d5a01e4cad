"""Image files → uint8 RGB arrays of one size, with a reason for every file that cannot be used.

Every image goes through ``factmas.data.imageio.load_image``, the one loader of factmas (query time uses it
too): pixel limit, EXIF orientation, RGB conversion of any mode (16-bit grayscale scaled by
255/65535, alpha dropped), bicubic resize to ``size`` × ``size`` (no crop).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


class ImageSkip(Exception):
    """An image file that cannot be used; ``str(e)`` is the reason written to the build report."""


class StrictImageError(ValueError):
    """Raised under ``--strict`` for the first image that cannot be used (names file and reason)."""


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
        images: uint8 [K, size, size, 3] of the K usable files, in input order.
        kept: int64 [K] index of each usable file in the input list.
        skipped: (name, reason) of each unusable file.
        seconds: wall time of decoding.  rate: files per second.
    """
    images: np.ndarray
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
    from factmas.progress import progress_bar

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept, skipped = [], []
    t0 = time.perf_counter()
    for i, p in enumerate(progress_bar(paths, desc="decoding images", unit="img", enabled=progress,
                                       mininterval=1.0)):
        try:
            out[len(kept)] = load_rgb(p, size)
        except ImageSkip as e:
            if strict:
                raise StrictImageError(f"{p}: {e} (--strict)") from None
            log.warning("skipping image %s: %s", p, e)
            skipped.append((Path(p).name, str(e)))
            continue
        kept.append(i)
    seconds = time.perf_counter() - t0
    return DecodeResult(images=out[: len(kept)].copy() if len(kept) < len(paths) else out,
                        kept=np.asarray(kept, dtype=np.int64), skipped=skipped, seconds=seconds)
