"""The scale benchmark's synthetic dataset (``bench/scale.py``), written chunk by chunk.

``write_streamed(path, n_images, n_facts, image_size)`` writes a schema-v1 factmas HDF5 file through
``factmas.data.dataset.write_dataset`` (its checks, its checksums) without holding the N images: the
pixels come from ``ScaleImages``, an ``ImageSource`` (``factmas.data.image_source``) that makes them
``chunk`` images at a time (one block kept), and the writer asks for them a chunk at a time
(``CHUNK_IMAGES``), so the ``build`` stage of ``bench/scale.py`` measures the real writer. (Before
issue 28's streamed writer this file wrote the same layout with its own h5py calls; the pixels,
made block by block from the same seeds, are the same.)

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

from pathlib import Path

import numpy as np

from factmas.data.dataset import write_dataset
from factmas.data.image_source import ImageSource


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


class ScaleImages(ImageSource):
    """uint8 [N, h, h, 3] images of the benchmark: the subject, predicate and object of each image's
    ⟨S,P,O⟩ as the colours of three horizontal bands plus N(0, 20) noise, made ``block`` images at a
    time (the noise of rows lo..lo+block-1 seeded by (seed, 5, lo)); the last block is kept, so a
    chunk inside it is a slice."""

    def __init__(self, words: np.ndarray, colours: list, image_size: int, seed: int, block: int) -> None:
        self.words, self.colours, self.seed, self.block = words, colours, seed, block  # words: int [N, 3]
        self.shape = (image_size, image_size)
        self._lo, self._px = -1, None

    def __len__(self) -> int:
        return len(self.words)

    def _make(self, lo: int) -> np.ndarray:
        h = self.shape[0]
        hi = min(lo + self.block, len(self))
        bands = [slice(0, h // 3), slice(h // 3, 2 * h // 3), slice(2 * h // 3, h)]
        w = self.words[lo:hi]
        px = np.empty((hi - lo, h, h, 3), np.float32)
        for k, band in enumerate(bands):
            px[:, band] = self.colours[k][w[:, k]][:, None, None, :]
        px += np.random.default_rng([self.seed, 5, lo]).normal(0, 20, px.shape).astype(np.float32)
        return np.clip(px, 0, 255).astype(np.uint8)

    def chunk(self, start: int, stop: int) -> np.ndarray:
        parts = []
        while start < stop:
            lo = start - start % self.block
            if lo != self._lo:
                self._lo, self._px = lo, self._make(lo)
            end = min(stop, lo + self.block)
            parts.append(self._px[start - lo:end - lo])
            start = end
        return np.concatenate(parts) if len(parts) != 1 else parts[0].copy()


def write_streamed(path: str | Path, n_images: int, n_facts: int, image_size: int = 16,
                   num_tasks: int = 4, seed: int = 0, chunk: int = 4096) -> dict:
    """Write the dataset (module docstring) to ``path`` atomically through ``write_dataset``;
    returns {"images", "facts", "pairs", "bytes"}. Raises ValueError on sizes below 10 images or
    facts, or an image size < 3."""
    if n_images < 10 or image_size < 3:
        raise ValueError(f"need n_images >= 10 and image_size >= 3, got {n_images}, {image_size}")
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
    n_words = {k: 1 + max(int(f[k][1:]) for f in facts if f[k]) for k in range(3)}
    colours = [_palette(n_words[k], seed + k) for k in range(3)]
    spo_words = np.array([[int(facts[i][k][1:]) for k in range(3)] for i in spo_ids], np.int64)  # [F3, 3]
    source = ScaleImages(spo_words[which], colours, image_size, seed, chunk)
    name = f"random{num_tasks}_seed0"
    write_dataset(path, source, [f"scale_{i:07d}.png" for i in range(n_images)], split, facts, pairs,
                  {name: task}, {name: {"kind": "random", "seed": 0, "num_tasks": num_tasks}},
                  {"source": "bench/scale_data.py", "seed": seed, "n_images": n_images, "n_facts": n_facts},
                  overwrite=True)
    return {"images": n_images, "facts": n_facts, "pairs": int(len(pairs)),
            "bytes": Path(path).stat().st_size}
