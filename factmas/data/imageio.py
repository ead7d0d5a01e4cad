"""The one image loader of factmas: an image file → uint8 RGB [size, size, 3].

Used by dataset building (``data_prep.images.load_rgb``) and by queries
(``factmas.model.load_image_file``), so a photo is prepared identically in both. Steps:

1. the header is read and the pixel count checked against ``max_pixels`` (default
   ``MAX_PIXELS`` = 50 megapixels) *before* decoding, so a decompression bomb (a small file whose
   header claims an enormous image) is refused with a clear ``ImageError`` instead of exhausting
   memory; a JPEG much larger than needed is decoded at a reduced scale (``Image.draft``, at least
   4× the output side), which keeps a legal 50-megapixel photo at a few MB and well under a second;
2. EXIF orientation is applied (a phone photo stored sideways is turned upright);
3. any mode becomes RGB: 16-bit grayscale (``I;16*``, and ``I`` as Pillow opens 16-bit PNGs) is
   scaled by 255/65535, 32-bit float ``F`` is taken as 0..1 when its maximum is ≤ 1, else as
   0..255 (clipped); palette images (with or without transparency), CMYK, ``1``, ``L``, ``LA`` and
   ``RGBA`` go through Pillow's conversion; the alpha channel is dropped (not composited);
4. bicubic resize to ``size`` × ``size`` (no crop).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from factmas.errors import FactmasError

MAX_PIXELS = 50_000_000
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageError(FactmasError, ValueError):
    """An image file that cannot be used. ``reason`` is the short cause ("missing file",
    "not an image (unidentified format)", "truncated: ...", "corrupt: ...", "too large: ...");
    ``str(e)`` is ``"{path}: {reason}"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def load_image(path: str | Path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one image file as uint8 [size, size, 3] RGB (module docstring for the steps).

    Args:
        path: the image file (any format Pillow reads).  size: output side in pixels (>= 1).
        max_pixels: largest width × height accepted.
    Returns:
        uint8 [size, size, 3].
    Raises:
        ImageError: missing or unreadable file, not an image, truncated or corrupt data, or more
            than ``max_pixels`` pixels (the message names the file and the reason).
        ValueError: ``size`` < 1.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"image size must be an integer >= 1, got {size!r}")
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "missing file")
    if not p.is_file():
        raise ImageError(p, "not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(p, f"too large: {w}x{h} = {w * h:,} pixels, above the limit "
                                        f"of {max_pixels:,} (a decompression bomb?)")
                if im.format == "JPEG" and min(w, h) > 8 * size:
                    im.draft("RGB", (4 * size, 4 * size))
                im.load()  # decodes fully: a truncated file raises here
                im = ImageOps.exif_transpose(im)
                rgb = to_rgb(im)
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
                return np.asarray(rgb, dtype=np.uint8).copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(p, "not an image (unidentified format)") from None
    except PermissionError as e:
        raise ImageError(p, f"unreadable: {e.strerror}") from None
    except Image.DecompressionBombError as e:
        raise ImageError(p, f"too large: {e} (factmas accepts up to {max_pixels:,} pixels)") from None
    except MemoryError:
        raise ImageError(p, "too large: out of memory while decoding") from None
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
        msg = str(e) or type(e).__name__
        raise ImageError(p, ("truncated: " if "truncated" in msg else "corrupt: ") + msg) from None


def to_rgb(im):
    """Any PIL mode → an RGB PIL image (module docstring, step 3)."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        return _gray(np.clip(a * (255.0 / 65535.0), 0, 255))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return _gray(np.clip(a * scale, 0, 255))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def _gray(a: np.ndarray):
    from PIL import Image
    return Image.fromarray(np.round(a).astype(np.uint8)).convert("RGB")
