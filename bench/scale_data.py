"""The scale benchmark's synthetic dataset (``bench/scale.py``), written chunk by chunk.

``write_streamed(path, n_images, n_facts, image_size)`` writes a schema-v1 factmas HDF5 file (the
layout of ``factmas.data.dataset``, which ``read_dataset`` then validates in full) without holding the
N images: pixels are made, checksummed (``factmas.data.schema.image_checksums``) and written
``chunk`` images at a time. ``factmas.data.dataset.write_dataset`` takes the whole uint8
[N, H, W, 3] array, so it cannot be used for N = 200,000 with flat memory; everything else it
writes is written here with the same keys, dtypes and chunking, and ``read_dataset`` checks the
result (``build`` stage of ``bench/scale.py``).

The facts: ``n_facts`` in all, fixed whatever N (so that the fact side, O(F), is the same at every N):
every ⟨S⟩ of ``n_subjects`` subjects, ⟨S,P⟩ facts and ⟨S,P,O⟩ facts over one-word names
(``s12``, ``p3``, ``o40``). Each image carries one ⟨S,P,O⟩ fact, drawn uniformly, and the ⟨S,P⟩ and ⟨S⟩
facts it implies (3 pairs per image, like ``factmas.data.synthetic``); its pixels show the subject,
predicate and object as the colours of three horizontal bands, plus noise. Image split 70/10/20 %
(train/val/test), facts in ``num_tasks`` tasks by a seeded random round robin (``random{k}_seed0``).
Memory: O(N) index arrays (image split, ids, pairs int32 [3N, 2]) and O(F) fact arrays; one chunk of
pixels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from factmas.data.dataset import SCHEMA_VERSION, tokenize_facts
from factmas.data.schema import CHECKSUM_KEY, image_checksums
from factmas.io import atomic_path


def make_facts(n_facts: int, seed: int = 0) -> tuple[list[tuple[str, str, str]], np.ndarray, np.ndarray]:
    """``n_facts`` unique facts and the ⟨S,P,O⟩ ones' implied facts.

    Returns (facts: list of (S, P, O) strings, '' where absent; spo int64 [F3] ids of the ⟨S,P,O⟩ facts;
    implied int64 [F3, 2] ids of each one's ⟨S,P⟩ and ⟨S⟩ fact). Raises ValueError below 10 facts.
    """
    if n_facts < 10:
        raise ValueError(f"n_facts must be >= 10, got {n_facts}")
    rng = np.random.default_rng([seed, 1])
    n_s = max(2, n_facts // 100)
    n_sp = max(n_s, n_facts // 10)
    n_spo = n_facts - n_s - n_sp
    n_p = max(2, int(np.ceil(2 * n_sp / n_s)))
    n_o = max(2, int(np.ceil(2 * n_spo / n_sp)))
    sp = rng.choice(n_s * n_p, n_sp, replace=False)                      # (s, p) codes
    sp[:n_s] = np.arange(n_s) * n_p                                      # every subject has a ⟨S,P⟩
    sp = np.unique(sp)
    while len(sp) < n_sp:                                                # refill after the overwrite
        sp = np.unique(np.concatenate([sp, rng.choice(n_s * n_p, n_sp - len(sp), replace=False)]))
    spo = np.unique(sp[rng.integers(0, n_sp, 4 * n_spo)] * n_o + rng.integers(0, n_o, 4 * n_spo))
    spo = np.sort(rng.choice(spo, n_spo, replace=False))
    facts = [(f"s{s}", "", "") for s in range(n_s)]
    facts += [(f"s{c // n_p}", f"p{c % n_p}", "") for c in sp]
    facts += [(f"s{c // n_o // n_p}", f"p{c // n_o % n_p}", f"o{c % n_o}") for c in spo]
    sp_id = {int(c): n_s + i for i, c in enumerate(sp)}
    implied = np.array([[sp_id[int(c // n_o)], int(c // n_o // n_p)] for c in spo], np.int64)
    ids = np.arange(n_s + n_sp, n_facts, dtype=np.int64)
    return facts, ids, implied


def _palette(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 2, n]).integers(0, 256, (n, 3)).astype(np.float32)


def write_streamed(path: str | Path, n_images: int, n_facts: int, image_size: int = 16,
                   num_tasks: int = 4, seed: int = 0, chunk: int = 4096) -> dict:
    """Write the dataset (module docstring) to ``path`` atomically; returns {"images", "facts",
    "pairs", "bytes"}. Raises ValueError on sizes below 10 images or facts, or an image size < 3."""
    if n_images < 10 or image_size < 3:
        raise ValueError(f"need n_images >= 10 and image_size >= 3, got {n_images}, {image_size}")
    import h5py
    facts, spo_ids, implied = make_facts(n_facts, seed)
    rng = np.random.default_rng([seed, 3])
    which = rng.integers(0, len(spo_ids), n_images)                       # each image's ⟨S,P,O⟩
    split = rng.choice(3, size=n_images, p=[0.7, 0.1, 0.2]).astype(np.int8)
    img = np.arange(n_images, dtype=np.int32)
    pairs = np.stack([np.repeat(img, 3),
                      np.stack([implied[which, 1], implied[which, 0], spo_ids[which]], 1).reshape(-1)
                      .astype(np.int32)], 1)                              # sorted: image, then S < SP < SPO
    perm = np.random.default_rng([seed, 4]).permutation(n_facts)
    task = np.empty(n_facts, np.int16)
    task[perm] = np.arange(n_facts) % num_tasks
    tokens, vocab = tokenize_facts(facts)
    order = np.array([1 + bool(f[1]) + bool(f[2]) for f in facts], np.int8)
    n_words = {k: 1 + max(int(f[k][1:]) for f in facts if f[k]) for k in range(3)}
    colours = [_palette(n_words[k], seed + k) for k in range(3)]
    spo_words = np.array([[int(facts[i][k][1:]) for k in range(3)] for i in spo_ids], np.int64)  # [F3, 3]
    h = image_size
    bands = [slice(0, h // 3), slice(h // 3, 2 * h // 3), slice(2 * h // 3, h)]
    str_dt = h5py.string_dtype("utf-8")
    with atomic_path(path, overwrite=True) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["image_size"] = h
            f.attrs["provenance"] = json.dumps({"source": "bench/scale_data.py", "seed": seed,
                                                "n_images": n_images, "n_facts": n_facts})
            ds = f.create_dataset("images", (n_images, h, h, 3), np.uint8, chunks=(1, h, h, 3))
            crc = f.create_dataset(CHECKSUM_KEY, (n_images,), np.uint32)
            for lo in range(0, n_images, chunk):
                hi = min(lo + chunk, n_images)
                w = spo_words[which[lo:hi]]                               # [B, 3] word ids
                px = np.empty((hi - lo, h, h, 3), np.float32)
                for k, band in enumerate(bands):
                    px[:, band] = colours[k][w[:, k]][:, None, None, :]
                px += np.random.default_rng([seed, 5, lo]).normal(0, 20, px.shape).astype(np.float32)
                px = np.clip(px, 0, 255).astype(np.uint8)
                ds[lo:hi] = px
                crc[lo:hi] = image_checksums(px)
            f.create_dataset("image_ids", data=[f"scale_{i:07d}.png" for i in range(n_images)], dtype=str_dt)
            f.create_dataset("image_split", data=split)
            for key, k in (("subject", 0), ("predicate", 1), ("object", 2)):
                f.create_dataset(f"facts/{key}", data=[x[k] for x in facts], dtype=str_dt)
            f.create_dataset("facts/order", data=order)
            f.create_dataset("facts/tokens", data=tokens)
            f.create_dataset("vocab", data=vocab, dtype=str_dt)
            f.create_dataset("pairs", data=pairs)
            name = f"random{num_tasks}_seed0"
            d = f.create_dataset(f"splits/{name}", data=task)
            for k, v in {"kind": "random", "seed": 0, "num_tasks": num_tasks}.items():
                d.attrs[k] = v
    return {"images": n_images, "facts": n_facts, "pairs": int(len(pairs)),
            "bytes": Path(path).stat().st_size}
