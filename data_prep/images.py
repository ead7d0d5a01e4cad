"""Image files → uint8 RGB arrays of one size, with a reason for every file that cannot be used.

Every image is converted to RGB (grayscale, CMYK, palette and alpha images included; the alpha channel
is dropped, as ``factmas.model.load_image_file`` does at query time) and resized to ``size`` × ``size``
with bicubic resampling (no crop), so dataset images and query images are prepared the same way.
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
    """Read one image file as uint8 [size, size, 3] RGB.

    Raises:
        ImageSkip: the file is missing, unreadable, truncated or not an image (reason in the message).
        ValueError: ``size`` < 1.
    """
    from PIL import Image, UnidentifiedImageError

    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    p = Path(path)
    if not p.exists():
        raise ImageSkip("missing file")
    if not p.is_file():
        raise ImageSkip("not a regular file")
    try:
        with Image.open(p) as im:
            im.load()  # decodes fully: a truncated file raises here
            rgb = _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageSkip("not an image (unidentified format)") from None
    except PermissionError as e:
        raise ImageSkip(f"unreadable: {e.strerror}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        msg = str(e) or type(e).__name__
        raise ImageSkip(("truncated: " if "truncated" in msg else "corrupt: ") + msg) from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8).copy()


def _to_rgb(im):
    """Any PIL mode → RGB: 16/32-bit grayscale is rescaled to 8 bits, palette-with-transparency and
    alpha modes go through RGBA, and the alpha channel is dropped."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


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
    from tqdm import tqdm

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept, skipped = [], []
    t0 = time.perf_counter()
    for i, p in enumerate(tqdm(paths, desc="decoding images", unit="img", disable=None if progress else True,
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
