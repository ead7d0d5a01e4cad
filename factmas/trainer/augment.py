"""Training-time image augmentation: random horizontal flip and random translation.

Used only on the training pairs (never for Ω, evaluation or queries). Draws come from the epoch's
seeded numpy Generator, so a resumed run sees exactly the augmented batches of an uninterrupted one.
"""
from __future__ import annotations

import numpy as np
import torch


def augment_images(x: torch.Tensor, rng: np.random.Generator, max_shift: int = 4,
                   flip: bool = True, total: int | None = None, start: int = 0) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 and shift it by up to ``max_shift`` pixels.

    Args:
        x: float [B, C, H, W] preprocessed images (any device).
        rng: numpy Generator giving the per-sample draws.
        max_shift: largest shift in pixels along each axis; the image is padded by reflection and
            cropped back to H × W (the standard pad-and-crop augmentation).
        flip: whether to flip.
        total, start: ``x`` holds rows ``start ... start + B`` of a batch of ``total`` images (one
            process of several, ``factmas.distributed``): the draws are made for all ``total`` images,
            as one process would, and rows ``start ...`` of them are applied. Default: all of ``x``.
    Returns:
        float [B, C, H, W], a new tensor (``x`` is not modified).
    Raises:
        ValueError: ``x`` is not 4-D, or ``max_shift`` is negative or not smaller than H and W.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_images: expected [B, C, H, W], got {tuple(x.shape)}")
    b, _, h, w = x.shape
    if max_shift < 0 or max_shift >= min(h, w):
        raise ValueError(f"augment_images: max_shift must be in [0, {min(h, w)}), got {max_shift}")
    n = b if total is None else int(total)
    if not 0 <= start <= n - b:
        raise ValueError(f"augment_images: rows {start}..{start + b} are not within a batch of {n}")
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    flips, shifts = flips[start:start + b], shifts[start:start + b]
    out = x.clone()
    if flips.any():
        idx = torch.as_tensor(np.flatnonzero(flips), device=x.device)
        out[idx] = out[idx].flip(-1)
    if max_shift:
        padded = torch.nn.functional.pad(out, (max_shift,) * 4, mode="reflect")
        for i, (dy, dx) in enumerate(shifts):
            top, left = max_shift + int(dy), max_shift + int(dx)
            out[i] = padded[i, :, top:top + h, left:left + w]
    return out
