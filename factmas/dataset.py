"""The factmas HDF5 dataset: the one module that writes and reads it (schema in data_prep/README.md).

Layout (schema version 1)::

    attrs: schema_version=1, image_size=H, provenance=<JSON string>
    images       uint8  [N, H, W, 3]   RGB
    image_ids    str    [N]            source file names
    image_split  int8   [N]            0 train, 1 val (held-out training images), 2 test
    facts/subject, facts/predicate, facts/object   str [F]  ('' where the order is lower)
    facts/order  int8   [F]            1 ⟨S⟩, 2 ⟨S,P⟩, 3 ⟨S,P,O⟩; the fact id is the row index
    facts/tokens int32  [F, 3, L]      word ids of the S, P, O slots, 0-padded
    vocab        str    [V]            words; id 0 is '<pad>'
    pairs        int32  [P, 2]         (image index, fact index), unique, sorted
    splits/<name> int16 [F]            task of each fact, 0..k-1; attrs kind, seed, num_tasks
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_path

SCHEMA_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
PAD = "<pad>"
MAX_SLOT_WORDS = 4


class DatasetError(ValueError):
    """The dataset file is missing, of another schema version, or inconsistent; names file and key."""


def _h5py():
    import h5py
    return h5py


@dataclass
class FactData:
    """An in-memory factmas dataset (all arrays numpy).

    Attributes:
        images: uint8 [N, H, W, 3].  image_ids: list[str] of length N.
        image_split: int8 [N] (0 train, 1 val, 2 test).
        subject, predicate, object: list[str] of length F ('' for absent slots).
        order: int8 [F].  tokens: int32 [F, 3, L].  vocab: list[str] (vocab[0] == '<pad>').
        pairs: int32 [P, 2] of (image index, fact index).
        splits: name -> int16 [F] task of each fact.  split_attrs: name -> attrs dict.
        provenance: dict.  path: the file read, if any.
    """
    images: np.ndarray
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
    provenance: dict = field(default_factory=dict)
    path: str = ""

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
        """int32 [P_t, 2] pairs whose fact is in ``task`` (one or several) and image in ``image_split``."""
        tasks = np.atleast_1d(np.asarray(task))
        fact_ok = np.isin(self.task_of_facts(split), tasks)
        img_ok = self.image_split == SPLIT_NAMES.index(image_split)
        keep = fact_ok[self.pairs[:, 1]] & img_ok[self.pairs[:, 0]]
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


def write_dataset(path: str | Path, images: np.ndarray, image_ids: Sequence[str],
                  image_split: np.ndarray, facts: Sequence[tuple[str, str, str]], pairs: np.ndarray,
                  splits: dict[str, np.ndarray], split_attrs: dict[str, dict] | None = None,
                  provenance: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """Write a schema-v1 dataset atomically (temporary file, then rename).

    Args:
        images: uint8 [N, H, W, 3].  image_ids: N names.  image_split: int [N] in {0, 1, 2}.
        facts: F tuples (S, P, O), '' for absent slots; order = number of leading non-empty slots.
        pairs: int [P, 2] (image, fact); duplicates are removed and rows sorted.
        splits: name -> int [F] task per fact.  split_attrs: name -> dict of attributes.
    Raises:
        DatasetError: inconsistent shapes, a gap in a fact's slots, or an out-of-range index.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    images = np.asarray(images)
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DatasetError(f"{path}: images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if len(image_ids) != n or len(image_split) != n:
        raise DatasetError(f"{path}: {n} images but {len(image_ids)} ids, {len(image_split)} split labels")
    order = np.array([_order(f, i, path) for i, f in enumerate(facts)], dtype=np.int8)
    pairs = np.unique(np.asarray(pairs, dtype=np.int32).reshape(-1, 2), axis=0)
    if len(pairs) and (pairs[:, 0].max() >= n or pairs[:, 1].max() >= len(facts) or pairs.min() < 0):
        raise DatasetError(f"{path}: pairs index beyond {n} images or {len(facts)} facts")
    tokens, vocab = tokenize_facts(facts)
    h5py = _h5py()
    str_dt = h5py.string_dtype("utf-8")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as h:
            h.attrs["schema_version"] = SCHEMA_VERSION
            h.attrs["image_size"] = images.shape[1]
            h.attrs["provenance"] = json.dumps(provenance or {})
            h.create_dataset("images", data=images, chunks=(1, *images.shape[1:]))
            h.create_dataset("image_ids", data=list(image_ids), dtype=str_dt)
            h.create_dataset("image_split", data=np.asarray(image_split, dtype=np.int8))
            for key, k in (("subject", 0), ("predicate", 1), ("object", 2)):
                h.create_dataset(f"facts/{key}", data=[f[k] for f in facts], dtype=str_dt)
            h.create_dataset("facts/order", data=order)
            h.create_dataset("facts/tokens", data=tokens)
            h.create_dataset("vocab", data=vocab, dtype=str_dt)
            h.create_dataset("pairs", data=pairs)
            for name, task in splits.items():
                task = np.asarray(task, dtype=np.int16)
                if task.shape != (len(facts),) or (len(task) and task.min() < 0):
                    raise DatasetError(f"{path}: split {name!r} must give a task >= 0 for each of "
                                       f"{len(facts)} facts")
                ds = h.create_dataset(f"splits/{name}", data=task)
                for k, v in (split_attrs or {}).get(name, {}).items():
                    ds.attrs[k] = v


def _order(fact: tuple[str, str, str], i: int, path: Any) -> int:
    if len(fact) != 3 or not fact[0]:
        raise DatasetError(f"{path}: fact {i} {fact!r} needs (S, P, O) with a non-empty S")
    o = 1 + bool(fact[1]) + bool(fact[2])
    if fact[2] and not fact[1]:
        raise DatasetError(f"{path}: fact {i} {fact!r} has an O but no P")
    return o


def read_dataset(path: str | Path, load_images: bool = True) -> FactData:
    """Read a schema-v1 dataset into memory.

    Raises:
        DatasetError: the file is missing or unreadable, of another schema version, or lacks a key
            (the message names the file and the key).
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
        if version != SCHEMA_VERSION:
            raise DatasetError(f"{path}: schema_version {version!r}, this factmas reads {SCHEMA_VERSION}; "
                               "rebuild the file with this version's data_prep")

        def get(key: str) -> np.ndarray:
            if key not in h:
                raise DatasetError(f"{path}: missing key {key!r} (schema v{SCHEMA_VERSION})")
            return h[key][()]

        strs = lambda key: [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in get(key)]
        # without images: an empty [0, H, W, 3] array that still tells the image size
        shape = h["images"].shape[1:] if "images" in h else (0, 0, 3)
        images = get("images") if load_images else np.zeros((0, *shape), np.uint8)
        splits, split_attrs = {}, {}
        for name in h.get("splits", {}):
            splits[name] = h[f"splits/{name}"][()]
            split_attrs[name] = {k: (v.item() if hasattr(v, "item") else v)
                                 for k, v in h[f"splits/{name}"].attrs.items()}
        return FactData(images=images, image_ids=strs("image_ids"), image_split=get("image_split"),
                        subject=strs("facts/subject"), predicate=strs("facts/predicate"),
                        object=strs("facts/object"), order=get("facts/order"),
                        tokens=get("facts/tokens"), vocab=strs("vocab"), pairs=get("pairs"),
                        splits=splits, split_attrs=split_attrs,
                        provenance=json.loads(h.attrs.get("provenance", "{}")), path=str(path))
