"""The image branch's input for dataset images: preprocessed pixels, or a pretrained backbone's frozen
stem output read from a fingerprinted on-disk feature cache.

A pretrained backbone's lower stages are frozen (``factmas.model.frozen.FrozenStem``), so their
output for a dataset image never changes: it is computed once per (dataset pixels, backbone, frozen
stages, weights) and stored beside the dataset file::

    <dataset>.h5.features/<backbone>-f<k>-<key>.npy    float16 [N, 2, C, h, w]
                                                        [:, 0] the image, [:, 1] mirrored left-right

``key`` hashes the dataset's pixels (read ``images[a:b]`` at a time), the stem's weights, the cache
version and, when the stem runs through a fast engine (``model.stem_engine`` "auto" on the CPU:
OpenVINO, else ONNX Runtime), that engine, so any change gives a new file; every run and method on
that dataset reuses it. The file is written chunk by chunk (``CHUNK_IMAGES`` images) into a
memory-mapped ``.npy`` at a temporary name (``factmas.model.feature_file``): a killed build resumes
from its last complete chunk, the final name appears only when the file is whole, and the cache is
read memory-mapped, so neither building nor reading holds it in memory. The stem rounds its live
output to float16 too, so cached and live inputs agree to one float16 step (the convolutions'
summation order depends on the batch size; chunks are whole batches, so a resumed build gives the
same bits as one pass).

``image_inputs(model, data, device)`` gives the object the trainer, Ω and the evaluator read images
through: ``get(ids, flip=None) -> float32 [B, ...]`` on ``device``; ``input_batches(inputs, keys)``
gives a sequence of such batches, read by ``DataLoader`` workers when ``inputs.num_workers`` > 0
(``train.num_workers``, ``factmas.data.loader``), the same tensors either way.

May import: numpy, torch, ``factmas.data.dataset``, ``factmas.data.loader``, ``factmas.errors``,
``factmas.io``, ``factmas.model``, ``factmas.progress``.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from factmas.data.dataset import FactData
from factmas.data.loader import batch_loader
from factmas.errors import FactmasError
from factmas.model import feature_file, preprocess, stem_engine
from factmas.progress import progress_bar

log = logging.getLogger(__name__)

CACHE_VERSION = 1


#: images per read when hashing pixels (``data.images[a:b]``; a lazy, file-backed dataset is never
#: read whole): 256 at 224 px is 38 MB
HASH_ROWS = 256


def pixels_hash(images: np.ndarray) -> str:
    """BLAKE2b (16 bytes, hex) of uint8 images [N, H, W, 3] and their shape: the cache's data key.

    Reads ``images[a:a + HASH_ROWS]`` in turn (any object with ``shape`` and slicing: an array, a
    memory map, a file-backed dataset); BLAKE2b is a stream hash, so the digest equals that of the
    whole array's bytes at once (the key of caches written before)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(images.shape)).encode())
    for lo in range(0, len(images), HASH_ROWS):
        h.update(np.ascontiguousarray(images[lo:lo + HASH_ROWS]).data)
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


#: images per chunk of the cache file (a multiple of the batch is used): what a kill can lose, and
#: the rows held in memory while building (512 at 224 px, Lite0's 6 frozen stages: 19 MB)
CHUNK_IMAGES = 512


def chunk_images(batch: int) -> int:
    """Images per chunk of the cache file: ``CHUNK_IMAGES`` rounded up to a multiple of ``batch``, so
    that every forward holds the same images as in one unchunked pass (the features depend on the
    batch to float16 rounding) and a resumed build gives the same bits."""
    return -(-CHUNK_IMAGES // batch) * batch


@torch.no_grad()
def feature_rows(stem: torch.nn.Module, images: np.ndarray, lo: int, hi: int,
                 device: torch.device | str = "cpu", batch: int = 8, bar=None) -> np.ndarray:
    """The stem's output for images ``lo .. hi`` and their mirror images, in forwards of ``batch``
    images from ``lo`` (reads ``images[a:b]`` only: any sliceable image source).

    Args:
        stem: a ``FrozenStem`` on ``device`` in eval mode.  images: uint8 [N, H, W, 3].
        bar: a progress bar advanced by the images computed (each orientation counts), or None.
    Returns:
        float16 [hi - lo, 2, C, h, w]: [:, 0] of the image, [:, 1] flipped left-right.
    """
    out = None
    for a in range(lo, hi, batch):
        b = min(a + batch, hi)
        x = preprocess(torch.from_numpy(np.ascontiguousarray(images[a:b])).to(device))
        for flip in (0, 1):
            h = stem(x.flip(-1) if flip else x).to(torch.float16).cpu().numpy()
            if out is None:
                out = np.empty((hi - lo, 2, *h.shape[1:]), np.float16)
            out[a - lo:b - lo, flip] = h
            if bar is not None:
                bar.update(len(h))
    return out


def compute_features(stem: torch.nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
                     batch: int | None = None, progress: bool = True) -> np.ndarray:
    """The stem's output for every image and its mirror image, in memory (``load_or_build`` writes the
    same rows to the cache file chunk by chunk instead: ``build_file``).

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
    bar = progress_bar(total=2 * len(images), unit="img", unit_scale=True, desc="feature cache",
                       enabled=progress)
    with bar:
        return feature_rows(stem, images, 0, len(images), device, batch, bar)


def build_file(stem: torch.nn.Module, images: np.ndarray, path: Path, device: torch.device | str = "cpu",
               batch: int | None = None, progress: bool = True) -> None:
    """Write the cache file ``path`` (float16 [N, 2, C, h, w], as ``compute_features``) chunk by chunk
    through ``feature_file.PartialFile``: resumed from the last complete chunk of an interrupted build
    with the same key, renamed to ``path`` only when whole; nothing done when another process finished
    it meanwhile. Holds one chunk (``chunk_images``) in memory, not the whole cache.

    Raises:
        OSError: the files cannot be written (disk full: checked before the memory map is created).
    """
    stem = stem.to(device).eval()
    batch = batch or default_batch(stem, device)
    chunk = chunk_images(batch)
    n = len(images)
    key = f"{path.name}:v{CACHE_VERSION}:batch{batch}"
    with feature_file.PartialFile(path, key, n, chunk) as part:
        if part.complete:
            return
        t0 = time.perf_counter()
        bar = progress_bar(total=2 * (n - part.start), unit="img", unit_scale=True,
                           desc="feature cache" + (f" (from image {part.start:,})" if part.start else ""),
                           enabled=progress)
        with bar:
            for lo in range(part.start, n, chunk):
                part.write(lo, feature_rows(stem, images, lo, min(lo + chunk, n), device, batch, bar))
        part.finish()
        seconds = time.perf_counter() - t0
        log.info("feature cache: %s images/s, %.0f s, %.0f MB written",
                 f"{2 * (n - part.start) / max(seconds, 1e-9):,.0f}", seconds, path.stat().st_size / 2**20)


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


def _read(path: Path, model: torch.nn.Module, data: FactData) -> np.ndarray:
    """The cache file memory-mapped (``feature_file.read``), its shape checked against the dataset and
    the stem. Raises FeatureCacheError naming the file."""
    try:
        feats = feature_file.read(path)
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
    return feats


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
        feats = _read(path, model, data)
        log.info("feature cache: %s (%.0f MB, reused, memory-mapped)", path, path.stat().st_size / 2**20)
        return feats
    log.info("feature cache: computing %s's frozen stages (%s) for %s images (+ mirrored) → %s",
             model.cfg.backbone, getattr(model.image_stem, "stages", "?"), f"{len(data.images):,}", path)
    build_file(model.image_stem, data.images, path, device, progress=progress)
    return _read(path, model, data)


class PixelInputs:
    """Image input from the dataset's pixels: ``preprocess``, then the stem if the model has one.

    Args:
        data: the dataset (uint8 images: an array or a lazy ``H5Images``).  device: where tensors go.
        stem: a ``FrozenStem`` applied to the pixels, or None (the pixels are the input).
        num_workers: ``DataLoader`` worker processes that read the batches (``train.num_workers``,
            ``input_batches``); 0: read in this process.
        stream: on a GPU, read each batch's rows from the dataset instead of copying every image
            to the device once; None: when ``num_workers`` > 0.
    ``get(ids int [B], flip bool [B] | None)`` → float32 [B, ...] on ``device``; ``flip`` mirrors
    the chosen images left-right before the stem. ``get`` = ``finish(host(ids, flip))`` (bit for
    bit) except on a GPU with every image on the device: ``host`` reads and, on the CPU,
    preprocesses (what a ``DataLoader`` worker runs), ``finish`` moves to the device (and there
    preprocesses) and applies the stem.
    """

    def __init__(self, data: FactData, device: torch.device | str = "cpu",
                 stem: torch.nn.Module | None = None, num_workers: int = 0,
                 stream: bool | None = None) -> None:
        self.data, self.device, self.stem = data, torch.device(device), stem
        self.num_workers = int(num_workers)
        self.pin_memory = self.device.type == "cuda"
        stream = self.num_workers > 0 if stream is None else stream
        self.pixels = (None if self.device.type == "cpu" or stream
                       else torch.from_numpy(np.asarray(data.images)).to(self.device))  # lazy H5Images too

    def host(self, ids: np.ndarray, flip: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
        """The CPU part of ``get`` (no CUDA: runs in ``DataLoader`` workers): on a CPU device the
        preprocessed, flipped float32 [B, 3, H, W] and None; on a GPU the uint8 rows [B, H, W, 3]
        and ``flip`` (4× less to copy; ``finish`` preprocesses on the device)."""
        rows = self.data.images[np.asarray(ids, np.int64)]
        if self.device.type == "cpu":
            return _flipped(preprocess(rows), flip), None
        return torch.from_numpy(np.ascontiguousarray(rows)), flip

    def finish(self, host: tuple[torch.Tensor, np.ndarray | None]) -> torch.Tensor:
        """``host``'s output → float32 [B, ...] on ``device``, through the stem if any."""
        x, flip = host
        if x.dtype == torch.uint8:
            x = _flipped(preprocess(x.to(self.device, non_blocking=True)), flip)
        return x if self.stem is None else self.stem(x)

    def get(self, ids: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        ids = np.asarray(ids, np.int64)
        if self.pixels is None:
            return self.finish(self.host(ids, flip))
        x = _flipped(preprocess(self.pixels[torch.as_tensor(ids, device=self.device)]), flip)
        return x if self.stem is None else self.stem(x)


def _flipped(x: torch.Tensor, flip: np.ndarray | None) -> torch.Tensor:
    """float [B, 3, H, W] ``x`` with the images where ``flip`` (bool [B]) is True mirrored
    left-right, in place."""
    if flip is not None and np.any(flip):
        sel = torch.as_tensor(np.flatnonzero(flip), device=x.device)
        x[sel] = x[sel].flip(-1)
    return x


class CachedInputs:
    """Image input from a feature cache float16 [N, 2, C, h, w] (``load_or_build``: memory-mapped).

    ``get(ids int [B], flip bool [B] | None)`` → float32 [B, C, h, w] on ``device``: orientation 1
    (mirrored) where ``flip`` is True. On the CPU only the rows asked for are read (from a memory
    map: through the page cache, nothing loaded whole), and the map's pages are dropped from the
    process's RSS after each call (``feature_file.release``: +0.25 ms per 64 rows): the kernel maps
    a whole page-cache folio around each row read (measured on Linux 6.18: 64 random rows of 32 KiB
    mapped 76 MiB), so without it an epoch would leave the whole file in the RSS; with it the cache's
    share of the RSS is bounded by one batch's folios, whatever N. On a GPU the whole cache is
    copied to the device once, ``GPU_COPY_ROWS`` rows at a time (no whole copy in host memory),
    unless ``stream`` (default: when ``num_workers`` > 0, ``train.num_workers``): then each batch's
    rows are read from the memory map (``host``, in ``DataLoader`` workers) and copied (``finish``).
    ``get`` = ``finish(host(ids, flip))``, bit for bit.
    """

    #: rows per host → GPU copy (at 37.6 KB a row, 38 MB)
    GPU_COPY_ROWS = 1024

    def __init__(self, features: np.ndarray, device: torch.device | str = "cpu", num_workers: int = 0,
                 stream: bool | None = None) -> None:
        self.device = torch.device(device)
        self.num_workers = int(num_workers)
        self.pin_memory = self.device.type == "cuda"
        self.rows = features        # the host copy (memory map) that ``host`` reads
        self.features = features
        stream = self.num_workers > 0 if stream is None else stream
        if self.device.type != "cpu" and not stream:
            self.features = torch.empty(features.shape, dtype=torch.float16, device=self.device)
            for lo in range(0, len(features), self.GPU_COPY_ROWS):
                rows = np.ascontiguousarray(features[lo:lo + self.GPU_COPY_ROWS])
                self.features[lo:lo + len(rows)] = torch.from_numpy(rows).to(self.device)
                feature_file.release(features)

    def __getstate__(self) -> dict:
        """Pickled (e.g. into ``DataLoader`` worker processes started by spawn or forkserver) by the
        cache file's path when memory-mapped, not by its content (numpy pickles a memmap whole); a
        copy on the GPU is left out (the unpickled object reads the memory map, as ``host`` does)."""
        state = dict(self.__dict__)
        if isinstance(state["features"], torch.Tensor):    # the device copy: workers read ``rows``
            state["features"] = state["rows"]
        for key in ("features", "rows"):
            value = state[key]
            if isinstance(value, np.memmap) and value.filename:
                state[key] = Path(value.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("features", "rows"):
            if isinstance(state.get(key), Path):
                state[key] = feature_file.read(state[key])
        state.setdefault("rows", state["features"])
        self.__dict__.update(state)

    def host(self, ids: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """The CPU part of ``get`` (no CUDA: runs in ``DataLoader`` workers): the rows read from the
        memory map, float32 [B, C, h, w] on a CPU device, float16 on a GPU (``finish`` converts on
        the device: half the bytes to copy)."""
        ids = np.asarray(ids, np.int64)
        side = np.zeros_like(ids) if flip is None else np.asarray(flip, np.int64)
        rows = np.ascontiguousarray(self.rows[ids, side])
        feature_file.release(self.rows)    # see the class docstring
        x = torch.from_numpy(rows)
        return x.to(torch.float32) if self.device.type == "cpu" else x

    def finish(self, host: torch.Tensor) -> torch.Tensor:
        """``host``'s output → float32 [B, C, h, w] on ``device``."""
        return host.to(self.device, non_blocking=True).to(torch.float32)

    def get(self, ids: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        if isinstance(self.features, torch.Tensor):
            ids = np.asarray(ids, np.int64)
            side = np.zeros_like(ids) if flip is None else np.asarray(flip, np.int64)
            dev = self.features.device
            return self.features[torch.as_tensor(ids, device=dev),
                                 torch.as_tensor(side, device=dev)].to(torch.float32)
        return self.finish(self.host(ids, flip))


class _Host:
    """``inputs.host(ids, flip)`` of a key (ids, flip): what a ``DataLoader`` worker runs (picklable)."""

    def __init__(self, inputs) -> None:
        self.inputs = inputs

    def __call__(self, key: tuple[np.ndarray, np.ndarray | None]):
        return self.inputs.host(*key)


def input_batches(inputs, keys: list[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[torch.Tensor]:
    """``inputs.get(ids, flip)`` for each key (ids int [B], flip bool [B] | None) of ``keys``, in order:
    float32 [B, ...] on the inputs' device.

    With ``inputs.num_workers`` > 0 (``train.num_workers``) and a source that splits its ``get``
    (``host`` / ``finish``: ``PixelInputs``, ``CachedInputs``), the rows are read by that many
    ``DataLoader`` workers (``factmas.data.loader.batch_loader``; pinned memory on a GPU) and finished
    here; the same tensors, bit for bit. Otherwise ``get`` in this process, one batch per ``next``.
    """
    workers = int(getattr(inputs, "num_workers", 0) or 0)
    if workers == 0 or not hasattr(inputs, "host"):
        for ids, flip in keys:
            yield inputs.get(ids, flip)
        return
    for host in batch_loader(_Host(inputs), keys, workers, pin_memory=getattr(inputs, "pin_memory", False)):
        yield inputs.finish(host)


def image_inputs(model: torch.nn.Module, data: FactData, device: torch.device | str = "cpu",
                 cache: bool = True, progress: bool = True, num_workers: int = 0) -> PixelInputs | CachedInputs:
    """The image input source of ``model`` on ``data``: the feature cache when the model has a frozen
    stem and ``cache`` is True, else pixels (through the stem, if any). ``num_workers``: batches read
    by that many ``DataLoader`` workers (``train.num_workers``; ``input_batches``). Raises ValueError
    as ``load_or_build``."""
    stem = getattr(model, "image_stem", None)
    if stem is None:
        return PixelInputs(data, device, num_workers=num_workers)
    if not cache:
        return PixelInputs(data, device, stem.to(device), num_workers=num_workers)
    return CachedInputs(load_or_build(model, data, device, progress), device, num_workers=num_workers)
