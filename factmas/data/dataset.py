"""The factmas HDF5 dataset: the one module that writes and reads it (schema in data_prep/README.md).

Layout (schema version 1; version 2 differs only in ``images``)::

    attrs: schema_version=1, image_size=H, provenance=<JSON string>
    images       uint8  [N, H, W, 3]   RGB
                 version 2: vlen uint8 [N], each image's JPEG bytes (``factmas.data.jpeg_images``)
    image_ids    str    [N]            source file names
    image_split  int8   [N]            0 train, 1 val (held-out training images), 2 test
    facts/subject, facts/predicate, facts/object   str [F]  ('' where the order is lower)
    facts/order  int8   [F]            1 ⟨S⟩, 2 ⟨S,P⟩, 3 ⟨S,P,O⟩; the fact id is the row index
    facts/tokens int32  [F, 3, L]      word ids of the S, P, O slots, 0-padded
    vocab        str    [V]            words; id 0 is '<pad>'
    pairs        int32  [P, 2]         (image index, fact index), unique, sorted
    splits/<name> int16 [F]            task of each fact, 0..k-1; attrs kind, seed, num_tasks
    split_images/<name> int16 [N]      (optional, image-disjoint splits) task of each training image,
                                       -1 for val/test images: a training image is trained only with
                                       the facts of its task (``FactData.task_pairs``)
    image_crc32  uint32 [N]            CRC-32 of each image's bytes (optional: files built before it
                                       lack it and are read without pixel verification); version
                                       2: of the decoded pixels

``write_dataset`` writes the images a chunk at a time, from an array or from an ``ImageSource``
(``factmas.data.image_source``: images made or decoded by chunks, never all held).

``read_dataset`` validates the whole file on open (``factmas.data.schema``): shapes agree, dtypes,
id ranges, tasks 0..K-1 each non-empty. The pixels stay in the file: ``FactData.images`` reads them
on demand (``factmas.data.lazy_images.H5Images``) and checks each image against its checksum when it
is first read; ``read_dataset(in_memory=True)`` loads and verifies them all on open instead.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from factmas.data import schema
from factmas.data.image_source import ImageSource, as_source, iter_chunks
from factmas.data.jpeg_images import JPEG_QUALITY, JpegImages, decode_jpeg, encode_jpeg
from factmas.data.lazy_images import H5Images
from factmas.data.schema import DatasetError
from factmas.io import atomic_path, check_room, deferred_sigint

SCHEMA_VERSION = 1                  # what write_dataset writes by default
SCHEMA_VERSIONS = (1, 2)            # what read_dataset reads (2: JPEG bytes, factmas.data.jpeg_images)
SPLIT_NAMES = ("train", "val", "test")
PAD = "<pad>"
MAX_SLOT_WORDS = 4


def _h5py():
    import h5py
    return h5py


@dataclass
class FactData:
    """A factmas dataset (all arrays numpy but the images, which may stay in the file).

    Attributes:
        images: uint8 [N, H, W, 3]: a numpy array, or an ``H5Images`` reading the dataset file on
            demand (``read_dataset``'s default; indexing it gives numpy arrays, ``np.asarray`` the
            whole array).  image_ids: list[str] of length N.
        image_split: int8 [N] (0 train, 1 val, 2 test).
        subject, predicate, object: list[str] of length F ('' for absent slots).
        order: int8 [F].  tokens: int32 [F, 3, L].  vocab: list[str] (vocab[0] == '<pad>').
        pairs: int32 [P, 2] of (image index, fact index).
        splits: name -> int16 [F] task of each fact.  split_attrs: name -> attrs dict.
        split_images: name -> int16 [N] task of each training image (-1: none) for the
            image-disjoint splits (``data_prep.splits.disjoint_images``); absent for the others.
        provenance: dict.  path: the file read, if any.
        image_crc32: uint32 [N] checksums stored in the file, or None (a file built before them).
    """
    images: np.ndarray | H5Images
    image_ids: list
    image_split: np.ndarray
    subject: list
    predicate: list
    object: list
    order: np.ndarray
    tokens: np.ndarray
    vocab: list
    pairs: np.ndarray
    splits: dict = field(default_factory=dict)
    split_attrs: dict = field(default_factory=dict)
    split_images: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    path: str = ""
    image_crc32: np.ndarray | None = None

    @property
    def num_facts(self) -> int:
        return len(self.subject)

    @property
    def num_tasks(self) -> dict:
        return {k: int(v.max()) + 1 if len(v) else 0 for k, v in self.splits.items()}

    def fact_text(self, f: int) -> str:
        """⟨S, P, O⟩ text of fact ``f`` with only its present slots, e.g. '<person, ride, horse>'."""
        parts = [self.subject[f], self.predicate[f], self.object[f]][: int(self.order[f])]
        return "<" + ", ".join(parts) + ">"

    def task_of_facts(self, split: str) -> np.ndarray:
        """int16 [F] task of each fact. Raises DatasetError listing the valid split names."""
        if split not in self.splits:
            raise DatasetError(f"{self.path or 'dataset'}: unknown split {split!r}; "
                               f"valid: {sorted(self.splits)}")
        return self.splits[split]

    def task_pairs(self, split: str, task: int | Sequence[int], image_split: str = "train") -> np.ndarray:
        """int32 [P_t, 2] pairs whose fact is in ``task`` (one or several) and image in ``image_split``.

        For an image-disjoint split (``split_images``) and ``image_split == "train"``, only the pairs
        whose training image belongs to the task of the pair's fact (each training image is trained
        with one task's facts); val and test images keep all their pairs.
        """
        tasks = np.atleast_1d(np.asarray(task))
        fact_task = self.task_of_facts(split)
        fact_ok = np.isin(fact_task, tasks)
        img_ok = self.image_split == SPLIT_NAMES.index(image_split)
        keep = fact_ok[self.pairs[:, 1]] & img_ok[self.pairs[:, 0]]
        if image_split == "train" and split in self.split_images:
            keep &= self.split_images[split][self.pairs[:, 0]] == fact_task[self.pairs[:, 1]]
        return self.pairs[keep]


def tokenize_facts(facts: Sequence[tuple[str, str, str]]) -> tuple[np.ndarray, list[str]]:
    """Word ids of each slot. Returns (tokens int32 [F, 3, L], vocab with '<pad>' at id 0).

    The vocabulary is sorted, so the same facts always give the same ids. Raises DatasetError when a
    slot has more than MAX_SLOT_WORDS words.
    """
    words = sorted({w for fact in facts for slot in fact for w in slot.split()})
    vocab = [PAD] + words
    index = {w: i for i, w in enumerate(vocab)}
    tokens = np.zeros((len(facts), 3, MAX_SLOT_WORDS), dtype=np.int32)
    for f, fact in enumerate(facts):
        for s, slot in enumerate(fact):
            ws = slot.split()
            if len(ws) > MAX_SLOT_WORDS:
                raise DatasetError(f"fact {f} slot {s}: {slot!r} has more than {MAX_SLOT_WORDS} words")
            tokens[f, s, : len(ws)] = [index[w] for w in ws]
    return tokens, vocab


def write_dataset(path: str | Path, images: np.ndarray | ImageSource, image_ids: Sequence[str],
                  image_split: np.ndarray, facts: Sequence[tuple[str, str, str]], pairs: np.ndarray,
                  splits: dict[str, np.ndarray], split_attrs: dict[str, dict] | None = None,
                  provenance: dict[str, Any] | None = None, overwrite: bool = False,
                  split_images: dict[str, np.ndarray] | None = None, schema_version: int = SCHEMA_VERSION,
                  jpeg_quality: int = JPEG_QUALITY) -> None:
    """Write a dataset atomically (temporary file, then rename), with image checksums.

    The images are written a chunk at a time (``factmas.data.image_source.CHUNK_IMAGES`` rows), and
    each chunk's checksums computed before the next is asked for, so an ``ImageSource`` (images made
    or decoded by chunks: ``data_prep``'s builders) is written holding one chunk of pixels. Everything
    ``read_dataset`` checks is checked before the file is written (the images' count and size from
    the source's ``len`` and ``shape``), so a written file always reads back. An image the source
    cannot give mid-way (its ``chunk`` raises) stops the write: the temporary file is removed, nothing
    is left at ``path`` and the source's error is raised. Ctrl-C during the write is held back until
    the HDF5 file is closed, then raised as ``KeyboardInterrupt`` with the temporary file removed
    (``factmas.io.deferred_sigint``).

    Args:
        images: uint8 [N, H, W, 3] (an array, or ``H5Images``), or an ``ImageSource`` of N images.
        image_ids: N names.  image_split: int [N] in {0, 1, 2}.
        facts: F tuples (S, P, O), '' for absent slots; order = number of leading non-empty slots.
        pairs: int [P, 2] (image, fact); duplicates are removed and rows sorted.
        splits: name -> int [F] task per fact (tasks 0..K-1, each non-empty).
        split_attrs: name -> dict of attributes (``num_tasks`` fixes K).
        split_images: name of a split -> int [N] task of each training image, -1 for the others
            (image-disjoint splits; ``factmas.data.schema.check_split_images``).
        schema_version: 1 (raw uint8 rows, the default) or 2 (each image as JPEG bytes of quality
            ``jpeg_quality``: lossy, 0.13 × the size; ``factmas.data.jpeg_images``; the checksums
            are those of the decoded pixels, what readers get). The free-space check before writing
            counts version 2's bytes from the first chunk's JPEGs (× N / its rows); each later chunk
            is checked again before it is written.
    Raises:
        DatasetError: inconsistent shapes, a gap in a fact's slots, an out-of-range index or task,
            or an empty task; a chunk from the source that is not uint8 [rows, H, W, 3].
        ValueError: ``schema_version`` not 1 or 2, ``jpeg_quality`` outside 1..100.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        OSError: too little free space beside ``path`` (``factmas.io.check_room``).
        KeyboardInterrupt: Ctrl-C during the write (nothing is left at ``path`` or beside it).
        Whatever ``images.chunk`` raises (nothing is left at ``path`` or beside it).
    """
    if schema_version not in SCHEMA_VERSIONS:
        raise ValueError(f"write_dataset: schema_version must be one of {list(SCHEMA_VERSIONS)}, "
                         f"got {schema_version!r}")
    source = as_source(images, path)
    n, (height, width) = len(source), source.shape
    if len(image_ids) != n or len(image_split) != n:
        raise DatasetError(f"{path}: {n} images but {len(image_ids)} ids, {len(image_split)} split labels")
    order = np.array([_order(f, i, path) for i, f in enumerate(facts)], dtype=np.int8)
    pairs = np.unique(np.asarray(pairs, dtype=np.int32).reshape(-1, 2), axis=0)
    if len(pairs) and (pairs[:, 0].max() >= n or pairs[:, 1].max() >= len(facts) or pairs.min() < 0):
        raise DatasetError(f"{path}: pairs index beyond {n} images or {len(facts)} facts")
    split_arrays = {}
    for name, task in splits.items():
        task = np.asarray(task)
        if task.shape != (len(facts),) or (len(task) and task.min() < 0):
            raise DatasetError(f"{path}: split {name!r} must give a task >= 0 for each of "
                               f"{len(facts)} facts")
        split_arrays[name] = task.astype(np.int16)
    tokens, vocab = tokenize_facts(facts)
    attrs_all = split_attrs or {}
    image_tasks = {k: np.asarray(v).astype(np.int16) for k, v in (split_images or {}).items()}
    check = FactData(images=np.zeros((0, height, width, 3), np.uint8), image_ids=list(image_ids),
                     image_split=np.asarray(image_split),
                     subject=[f[0] for f in facts], predicate=[f[1] for f in facts],
                     object=[f[2] for f in facts], order=order, tokens=tokens, vocab=vocab,
                     pairs=pairs, splits=split_arrays, split_attrs=attrs_all, split_images=image_tasks)
    schema.check_values(path, check)
    if schema_version == 2 and not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"encode_jpeg: quality must be 1..100, got {jpeg_quality}")
    chunks = _image_chunks(source, path, schema_version, jpeg_quality)
    first = next(chunks, None)          # version 2: its JPEG sizes give the estimate of the file's
    if schema_version == 2:
        done = 0 if first is None else first[1] - first[0]
        image_bytes = 0 if first is None else int(sum(len(b) + 16 for b in first[2]) * n / max(done, 1))
    else:
        image_bytes = n * height * width * 3
    h5py = _h5py()
    str_dt = h5py.string_dtype("utf-8")
    check_room(path, image_bytes + 64 * len(image_ids) + np.asarray(pairs).nbytes
               + np.asarray(tokens).nbytes + (1 << 20))     # h5py can crash on a full disk
    with atomic_path(path, overwrite=overwrite) as tmp, deferred_sigint():
        with h5py.File(tmp, "w") as h:
            h.attrs["schema_version"] = int(schema_version)
            h.attrs["image_size"] = height
            h.attrs["provenance"] = json.dumps(provenance or {})
            crc = np.zeros(n, np.uint32)
            if schema_version == 1:
                ds = h.create_dataset("images", (n, height, width, 3), np.uint8,
                                      chunks=(1, height, width, 3) if n else None)
            else:
                ds = h.create_dataset("images", (n,), dtype=h5py.vlen_dtype(np.uint8))
            for lo, hi, rows, sums in itertools.chain([first] if first else [], chunks):
                if schema_version == 1:
                    ds[lo:hi] = rows
                else:
                    if lo:                  # the first chunk was counted in the check above
                        check_room(path, sum(len(b) + 16 for b in rows))
                    for i, b in enumerate(rows):
                        ds[lo + i] = b
                crc[lo:hi] = sums
            if schema_version == 2:
                ds.attrs["encoding"] = "jpeg"
                ds.attrs["jpeg_quality"] = int(jpeg_quality)
            h.create_dataset(schema.CHECKSUM_KEY, data=crc)
            h.create_dataset("image_ids", data=list(image_ids), dtype=str_dt)
            h.create_dataset("image_split", data=np.asarray(image_split, dtype=np.int8))
            for key, k in (("subject", 0), ("predicate", 1), ("object", 2)):
                h.create_dataset(f"facts/{key}", data=[f[k] for f in facts], dtype=str_dt)
            h.create_dataset("facts/order", data=order)
            h.create_dataset("facts/tokens", data=tokens)
            h.create_dataset("vocab", data=vocab, dtype=str_dt)
            h.create_dataset("pairs", data=pairs)
            for name, task in split_arrays.items():
                ds = h.create_dataset(f"splits/{name}", data=task)
                for k, v in attrs_all.get(name, {}).items():
                    ds.attrs[k] = v
            for name, image_task in image_tasks.items():
                h.create_dataset(f"split_images/{name}", data=image_task)


def _image_chunks(source: ImageSource, path: Any, schema_version: int,
                  jpeg_quality: int) -> Iterator[tuple[int, int, Any, np.ndarray]]:
    """(start, stop, what to store, uint32 [stop - start] checksums) of each chunk of ``source``:
    version 1 stores the uint8 rows and checksums their bytes; version 2 stores each image's JPEG
    bytes (a list) and checksums the pixels they decode to (what readers get), one image decoded
    at a time."""
    for lo, hi, px in iter_chunks(source, path):
        if schema_version == 1:
            yield lo, hi, px, schema.image_checksums(px)
            continue
        blobs = [encode_jpeg(im, jpeg_quality) for im in px]
        sums = np.array([schema.image_checksums(decode_jpeg(b, px.shape[1:])[None])[0] for b in blobs],
                        np.uint32)
        yield lo, hi, blobs, sums


def _order(fact: tuple[str, str, str], i: int, path: Any) -> int:
    if len(fact) != 3 or not fact[0]:
        raise DatasetError(f"{path}: fact {i} {fact!r} needs (S, P, O) with a non-empty S")
    o = 1 + bool(fact[1]) + bool(fact[2])
    if fact[2] and not fact[1]:
        raise DatasetError(f"{path}: fact {i} {fact!r} has an O but no P")
    return o


def read_dataset(path: str | Path, load_images: bool = True, verify: bool = True,
                 in_memory: bool = False) -> FactData:
    """Read a dataset (schema version 1 or 2), validating the whole file first; the pixels stay in the
    file (version 2: decoded from their JPEG bytes when read, ``factmas.data.jpeg_images``).

    Args:
        path: the HDF5 file.
        load_images: give the pixels (False: ``images`` is an empty uint8 [0, H, H, 3]).
        verify: compare each image with its stored CRC-32 (about 2 ms per 1,000 images of 64×64;
            files without checksums are read unverified): lazily, each image when this process
            first reads it; with ``in_memory``, all of them here.
        in_memory: load every pixel into a numpy array now (the behaviour before issue 28: N × H ×
            H × 3 bytes of memory); False: ``images`` is an ``H5Images`` reading rows on demand.
    Raises:
        DatasetError: the file is missing or unreadable, of another schema version, lacks a key, has
            a key of the wrong dtype or shape, ids or tasks out of range, an empty task, undecodable
            strings or (``in_memory``) pixels that do not match their checksums (the message names
            the file, the key and what was expected). Lazy images raise it when a bad image is read.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file (build one with python -m data_prep.flickr8k)")
    h5py = _h5py()
    try:
        h = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file: {e}") from e
    with h:
        version = h.attrs.get("schema_version")
        version = version.item() if hasattr(version, "item") else version  # np.int64(1) → 1
        if version not in SCHEMA_VERSIONS:
            raise DatasetError(f"{path}: schema_version {version!r} (attribute 'schema_version'), this "
                               f"factmas reads {' and '.join(map(str, SCHEMA_VERSIONS))}; rebuild the "
                               "file with this version's data_prep")
        entries = _entries(h, h5py)
        if version == 2 and "images" in entries:
            entries["images"] = _jpeg_entry(path, h, h5py)
        sizes = schema.check_layout(path, entries)
        size_attr = h.attrs.get("image_size")
        if size_attr is not None and int(np.asarray(size_attr)) != sizes["H"]:
            raise DatasetError(f"{path}: attribute 'image_size' is {size_attr}, but key 'images' holds "
                               f"{sizes['H']}x{sizes['H']} images")

        def get(key: str) -> np.ndarray:
            try:
                return h[key][()]
            except (OSError, ValueError, TypeError) as e:
                raise DatasetError(f"{path}: key {key!r} cannot be read (corrupt file?): {e}") from e

        def strs(key: str) -> list[str]:
            out = []
            for i, s in enumerate(get(key)):
                try:
                    out.append(s.decode("utf-8") if isinstance(s, bytes) else str(s))
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{path}: key {key!r} row {i} is not UTF-8 text: {e}") from None
            return out

        image_shape = entries["images"][1]      # (N, H, W, 3), also of version 2's JPEG bytes
        if load_images and in_memory:
            images = get("images") if version == 1 else None   # version 2: decoded below
        elif load_images:
            images = None                       # H5Images below, once the checksums are read
        else:
            images = np.zeros((0, *image_shape[1:]), np.uint8)  # still tells the size

        def task_arrays(key: str, size: str) -> dict:
            """The arrays of group ``key`` (one int [size] task array per split name)."""
            group = h.get(key)
            if group is not None and not isinstance(group, h5py.Group):
                raise DatasetError(f"{path}: key '{key}' must be a group of int [{size}] task arrays")
            arrays = {}
            for name in group or []:
                if not isinstance(group[name], h5py.Dataset):
                    raise DatasetError(f"{path}: key '{key}/{name}' is a group; expected int [{size}]")
                arrays[name] = get(f"{key}/{name}")
            return arrays

        splits = task_arrays("splits", "F")
        split_attrs = {name: {k: (v.item() if hasattr(v, "item") else v)
                              for k, v in h[f"splits/{name}"].attrs.items()} for name in splits}
        image_tasks = task_arrays("split_images", "N")
        try:
            provenance = json.loads(h.attrs.get("provenance", "{}"))
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path}: attribute 'provenance' is not a JSON object: {e}") from None
        if not isinstance(provenance, dict):
            raise DatasetError(f"{path}: attribute 'provenance' is not a JSON object")
        crc = get(schema.CHECKSUM_KEY) if schema.CHECKSUM_KEY in h else None
        if images is None:
            lazy = H5Images if version == 1 else JpegImages
            images = lazy(str(path), image_shape, crc if verify else None)
            if in_memory:                       # version 2 read whole: decoded here, verified below
                images = np.asarray(lazy(str(path), image_shape, None))
        data = FactData(images=images, image_ids=strs("image_ids"), image_split=get("image_split"),
                        subject=strs("facts/subject"), predicate=strs("facts/predicate"),
                        object=strs("facts/object"), order=get("facts/order"),
                        tokens=get("facts/tokens"), vocab=strs("vocab"), pairs=get("pairs"),
                        splits=splits, split_attrs=split_attrs, split_images=image_tasks,
                        provenance=provenance,
                        path=str(path), image_crc32=crc)
    schema.check_values(path, data)
    if load_images and in_memory and verify and crc is not None:
        schema.verify_checksums(path, images, crc, data.image_ids)
    return data


def _jpeg_entry(path: Path, h: Any, h5py: Any) -> tuple[Any, tuple, bool]:
    """The (dtype, shape, is_string) that ``schema.check_layout`` checks for a version-2 ``images``
    key: uint8 (N, H, H, 3) with H from attribute ``image_size``, after checking that the key holds
    N variable-length uint8 byte strings. Raises DatasetError naming the file, key or attribute."""
    ds = h["images"]
    base = h5py.check_vlen_dtype(ds.dtype)
    if base is None or np.dtype(base) != np.uint8 or ds.ndim != 1:
        raise DatasetError(f"{path}: key 'images' is {ds.dtype} {ds.shape}; schema version 2 expects "
                           "variable-length uint8 [N] (each image's JPEG bytes)")
    size = h.attrs.get("image_size")
    try:
        size = int(np.asarray(size))
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise DatasetError(f"{path}: attribute 'image_size' is {h.attrs.get('image_size')!r}; schema "
                           "version 2 needs the images' side in pixels (an integer >= 1)")
    return np.dtype(np.uint8), (ds.shape[0], size, size, 3), False


def _entries(h: Any, h5py: Any) -> dict[str, tuple[Any, tuple, bool]]:
    """key -> (dtype, shape, is_string) of every dataset of the schema found in ``h``."""
    keys = list(schema.LAYOUT) + list(schema.OPTIONAL)
    splits = h.get("splits")
    if splits is not None and isinstance(splits, h5py.Group):
        keys += [f"splits/{name}" for name in splits]
    images = h.get("split_images")
    if images is not None and isinstance(images, h5py.Group):
        keys += [f"split_images/{name}" for name in images]
    out = {}
    for key in keys:
        obj = h.get(key)
        if isinstance(obj, h5py.Dataset):
            out[key] = (obj.dtype, obj.shape, h5py.check_string_dtype(obj.dtype) is not None)
    return out
