"""Image input of the model: uint8 RGB pixels → normalized float tensors, and image files → pixels.

``preprocess`` scales pixels to [0, 1] and normalizes each channel with the fixed ImageNet statistics
used by torchvision's pretrained models (mean 0.485/0.456/0.406, std 0.229/0.224/0.225), so the same
input works for the small CNN trained from scratch and for a pretrained resnet18. The statistics are
constants, never estimated from data, so preprocessing is identical at train, Ω and query time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB images → float32 model input.

    Args:
        images: uint8 [B, H, W, 3] (numpy array or torch tensor, any device) or a single [H, W, 3].
    Returns:
        float32 [B, 3, H, W] on the input's device (CPU for numpy):
        ``(x / 255 − IMAGENET_MEAN[c]) / IMAGENET_STD[c]`` per channel c.
    Raises:
        ValueError: wrong dtype or shape (the message gives what was received).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"preprocess: expected a numpy array or torch tensor, got {type(images).__name__}")
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess: expected uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess: expected uint8 [B, H, W, 3], got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return ((x - mean) / std).contiguous()


def load_image_file(path: str | Path, size: int) -> np.ndarray:
    """Read an image file as the dataset stores images (used by ``factmas query``).

    A thin call to ``factmas.data.imageio.load_image``, the loader dataset building uses too (bit depth,
    EXIF orientation, alpha, palette, CMYK, a pixel limit against decompression bombs).

    Args:
        path: image file.  size: side of the output in pixels (the dataset's ``image_size``).
    Returns:
        uint8 [size, size, 3] RGB.
    Raises:
        ValueError: (``factmas.data.imageio.ImageError``) the file is missing, unreadable, not an image
            or too large (the message names the file), or ``size`` < 1.
    """
    from factmas.data.imageio import load_image
    return load_image(path, size)
