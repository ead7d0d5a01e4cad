"""The image branch's input for dataset images: preprocessed pixels, or a pretrained backbone's frozen
stem output read from a fingerprinted on-disk feature cache.

A pretrained backbone's lower stages are frozen (``factmas.model.frozen.FrozenStem``), so their
output for a dataset image never changes: it is computed once per (dataset pixels, backbone, frozen
stages, weights) and stored beside the dataset file::

    <dataset>.h5.features/<backbone>-f<k>-<key>.npy    float16 [N, 2, C, h, w]
                                                        [:, 0] the image, [:, 1] mirrored left-right

``key`` hashes the dataset's pixels, the stem's weights, the cache version and, when the stem runs
through a fast engine (``model.stem_engine`` "auto" on the CPU: ONNX Runtime, else OpenVINO), that engine, so any change gives a
new file; every run and method on that dataset reuses it. The file is written to a temporary name and
renamed (never half-written). The stem rounds its live output to float16 too, so cached and live
inputs agree to one float16 step (the convolutions' summation order depends on the batch size).

``image_inputs(model, data, device)`` gives the object the trainer, Ω and the evaluator read images
through: ``get(ids, flip=None) -> float32 [B, ...]`` on ``device``.

May import: numpy, torch, ``factmas.data.dataset``, ``factmas.errors``, ``factmas.io``, ``factmas.model``,
``factmas.progress``.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from factmas.data.dataset import FactData
from factmas.errors import FactmasError
from factmas.io import atomic_path
from factmas.model import preprocess, stem_engine
from factmas.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def pixels_hash(images: np.ndarray) -> str:
    """BLAKE2b (16 bytes, hex) of uint8 images [N, H, W, 3] and their shape: the cache's data key."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def stem_hash(stem: torch.nn.Module) -> str:
    """BLAKE2b (16 bytes, hex) of the stem's parameters and buffers (names, shapes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in stem.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_file(data: FactData, model: torch.nn.Module, device: torch.device | str = "cpu") -> Path:
    """Where the feature cache of ``model``'s stem on ``data`` lives (see the module docstring).

    The key also names the engine when the stem runs through OpenVINO or ONNX Runtime on ``device``: their features
    equal torch's only to float16 rounding, so a cache of one engine never stands in for the other's
    (a torch-built cache keeps the key it had before engines existed).

    Raises:
        ValueError: the dataset has no file path (an in-memory dataset has nowhere to keep a cache).
    """
    if not data.path:
        raise ValueError("feature cache: the dataset has no file path; set train.feature_cache false")
    cfg = model.cfg
    uses_ort = getattr(model.image_stem, "uses_onnxruntime", None)
    engine = (f":{stem_engine.fast_engine()}" if uses_ort is not None and uses_ort(torch.device(device))
              else "")
    key = hashlib.blake2b(f"{CACHE_VERSION}:{pixels_hash(data.images)}:{stem_hash(model.image_stem)}"
                          f"{engine}".encode(), digest_size=8).hexdigest()
    stages = getattr(model.image_stem, "stages", cfg.freeze_stages)
    return Path(f"{data.path}.features") / f"{cfg.backbone}-f{stages}-{key}.npy"


def default_batch(stem: torch.nn.Module, device: torch.device | str) -> int:
    """Images per forward of the cache: 2 when the stem runs through a fast engine (ONNX Runtime:
    2.09× torch at batch 8, against 1.75× for ONNX Runtime at batch 8; 224 px, 1 thread; OpenVINO
    was measured at batch 1 and 2, bench/results/cache_speed_engines.json), else 8 (torch's fastest
    eager NCHW batch: 2.4× batch 64 at 128 px, 1.0× batch 4, 1.09× batch 2; docs/benchmarks.md § 7
    and § 8.6)."""
    uses_ort = getattr(stem, "uses_onnxruntime", None)
    return 2 if uses_ort is not None and uses_ort(torch.device(device)) else 8


@torch.no_grad()
def compute_features(stem: torch.nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
                     batch: int | None = None, progress: bool = True) -> np.ndarray:
    """The stem's output for every image and its mirror image.

    Args:
        stem: a ``FrozenStem`` (pixels → float16-rounded features).
        images: uint8 [N, H, W, 3].  device: where the stem runs (on the CPU through OpenVINO or
            ONNX Runtime when installed: ``FrozenStem``'s engine, 1.5-2.1× torch's images/s at 1 thread, same
            features to float16 rounding; bench/cache_speed.py, docs/benchmarks.md § 8.6).
            batch: images per forward; None: ``default_batch`` (small batches keep the
            activations in the CPU caches and the allocator's reuse; bench/cpu_memory.py,
            bench/cache_speed.py).
    Returns:
        float16 [N, 2, C, h, w]: [:, 0] of the image, [:, 1] of the image flipped left-right.
    """
    stem = stem.to(device).eval()
    batch = batch or default_batch(stem, device)
    out = None
    bar = progress_bar(total=2 * len(images), unit="img", unit_scale=True, desc="feature cache",
                       enabled=progress)
    with bar:
        for lo in range(0, len(images), batch):
            x = preprocess(torch.from_numpy(np.ascontiguousarray(images[lo:lo + batch])).to(device))
            for flip in (0, 1):
                h = stem(x.flip(-1) if flip else x).to(torch.float16).cpu().numpy()
                if out is None:
                    out = np.empty((len(images), 2, *h.shape[1:]), np.float16)
                out[lo:lo + len(h), flip] = h
                bar.update(len(h))
    return out


class FeatureCacheError(FactmasError, ValueError):
    """A feature cache file that cannot be used (unreadable, truncated, of another shape); names it."""


def stem_output_shape(model: torch.nn.Module, data: FactData) -> tuple[int, ...] | None:
    """(C, h, w) the model's frozen stem gives for one of the dataset's images (None without a
    stem or images): what every row of a feature cache must hold."""
    stem = getattr(model, "image_stem", None)
    if stem is None or not len(data.images):
        return None
    device = next(stem.parameters(), torch.zeros(0)).device
    with torch.no_grad():
        return tuple(stem(preprocess(data.images[:1]).to(device)).shape[1:])


def load_or_build(model: torch.nn.Module, data: FactData, device: torch.device | str = "cpu",
                  progress: bool = True, path: Path | None = None) -> np.ndarray:
    """The feature cache of ``model.image_stem`` on ``data``: read if present, else built and saved.

    ``path``: ``cache_file(data, model)`` when the caller already has it (None: computed here).
    Returns:
        float16 [N, 2, C, h, w] (module docstring).
    Raises:
        ValueError: no dataset path, or a dataset read without its pixels (``load_images=False``:
            the key would not cover them).  FeatureCacheError (a ValueError): a cache file that
            cannot be read, is truncated or of another shape (named; delete it to rebuild).
    """
    if len(data.images) != len(data.image_split):
        raise ValueError(f"{data.path or 'dataset'}: the feature cache needs the dataset's pixels "
                         f"({len(data.images)} of {len(data.image_split)} images loaded; read it "
                         "with load_images=True)")
    path = path or cache_file(data, model, device)   # the caller may pass it (hashing pixels: ~1 s)
    if path.exists():
        try:
            feats = np.load(path, allow_pickle=False)
        except Exception as e:          # numpy raises OSError, ValueError, EOFError, ... by damage
            raise FeatureCacheError(f"{path}: unreadable feature cache ({type(e).__name__}: "
                                    f"{str(e)[:200]}); delete it to rebuild") from e
        want = stem_output_shape(model, data)
        if (not isinstance(feats, np.ndarray) or feats.dtype != np.float16
                or feats.shape[:2] != (len(data.images), 2)
                or (want is not None and tuple(feats.shape[2:]) != want)):
            raise FeatureCacheError(
                f"{path}: feature cache of shape {getattr(feats, 'shape', '?')} "
                f"{getattr(feats, 'dtype', type(feats).__name__)}, expected "
                f"[{len(data.images)}, 2, {', '.join(map(str, want or ('...',)))}] float16; delete it "
                "to rebuild")
        log.info("feature cache: %s (%.0f MB, reused)", path, path.stat().st_size / 2**20)
        return feats
    log.info("feature cache: computing %s's frozen stages (%s) for %s images (+ mirrored) → %s",
             model.cfg.backbone, getattr(model.image_stem, "stages", "?"), f"{len(data.images):,}", path)
    t0 = time.perf_counter()
    feats = compute_features(model.image_stem, data.images, device, progress=progress)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, feats)
    log.info("feature cache: %s images/s, %.0f s, %.0f MB written", f"{2 * len(feats) / seconds:,.0f}",
             seconds, path.stat().st_size / 2**20)
    return feats


class PixelInputs:
    """Image input from the dataset's pixels: ``preprocess``, then the stem if the model has one.

    Args:
        data: the dataset (uint8 images in memory).  device: where tensors go.
        stem: a ``FrozenStem`` applied to the pixels, or None (the pixels are the input).
    ``get(ids int [B], flip bool [B] | None)`` → float32 [B, ...] on ``device``; ``flip`` mirrors
    the chosen images left-right before the stem.
    """

    def __init__(self, data: FactData, device: torch.device | str = "cpu",
                 stem: torch.nn.Module | None = None) -> None:
        self.data, self.device, self.stem = data, torch.device(device), stem
        self.pixels = None if self.device.type == "cpu" else torch.from_numpy(data.images).to(self.device)

    def get(self, ids: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        ids = np.asarray(ids, np.int64)
        if self.pixels is None:
            x = preprocess(self.data.images[ids])
        else:
            x = preprocess(self.pixels[torch.as_tensor(ids, device=self.device)])
        if flip is not None and np.any(flip):
            sel = torch.as_tensor(np.flatnonzero(flip), device=x.device)
            x[sel] = x[sel].flip(-1)
        return x if self.stem is None else self.stem(x)


class CachedInputs:
    """Image input from a feature cache float16 [N, 2, C, h, w] (``load_or_build``).

    ``get(ids int [B], flip bool [B] | None)`` → float32 [B, C, h, w] on ``device``: orientation 1
    (mirrored) where ``flip`` is True. On a GPU the whole cache is copied to the device once.
    """

    def __init__(self, features: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.features = torch.from_numpy(features)
        if self.device.type != "cpu":
            self.features = self.features.to(self.device)

    def get(self, ids: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(ids, np.int64), device=self.features.device)
        side = torch.zeros_like(ids) if flip is None else torch.as_tensor(
            np.asarray(flip, np.int64), device=self.features.device)
        return self.features[ids, side].to(torch.float32)


def image_inputs(model: torch.nn.Module, data: FactData, device: torch.device | str = "cpu",
                 cache: bool = True, progress: bool = True) -> PixelInputs | CachedInputs:
    """The image input source of ``model`` on ``data``: the feature cache when the model has a frozen
    stem and ``cache`` is True, else pixels (through the stem, if any). Raises ValueError as
    ``load_or_build``."""
    stem = getattr(model, "image_stem", None)
    if stem is None:
        return PixelInputs(data, device)
    if not cache:
        return PixelInputs(data, device, stem.to(device))
    return CachedInputs(load_or_build(model, data, device, progress), device)
