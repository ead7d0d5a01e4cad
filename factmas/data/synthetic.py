"""Tiny synthetic fact datasets for tests and smoke runs (no data from outside needed).

Each image shows its subject as the colour of the top band, its predicate as the colour of the middle
band and its object as the colour of the bottom band, plus noise, so the facts are learnable from
pixels. Every image carries one ⟨S,P,O⟩ fact and the ⟨S,P⟩ and ⟨S⟩ facts it implies.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from factmas.data.dataset import write_dataset

SUBJECTS = ["person", "dog", "bird", "car"]
PREDICATES = ["ride", "run through", "sit on"]
OBJECTS = ["horse", "grass", "bench"]
_COLOURS = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48]], dtype=np.float32)


def make_synthetic_dataset(path: str | Path, n_images: int = 240, image_size: int = 32,
                           num_tasks: int = 2, seed: int = 0, overwrite: bool = True) -> Path:
    """Write a synthetic schema-v1 dataset and return its path.

    Args:
        n_images: number of images (about 70% train, 10% val, 20% test).
        image_size: H = W of the uint8 RGB images.
        num_tasks: the split ``random{num_tasks}_seed0`` assigns facts to tasks round-robin in a
            seeded random order; ``semantic{k}`` with k = min(num_tasks, 4) groups facts by subject;
            ``disjoint{num_tasks}_seed0`` (image-disjoint) has the facts' tasks of the random split
            and puts each training image in the task of its ⟨S,P,O⟩ fact (``split_images``).
    Returns:
        ``Path(path)``.
    """
    rng = np.random.default_rng(seed)
    facts: list[tuple[str, str, str]] = []
    index: dict[tuple[str, str, str], int] = {}

    def fact_id(f: tuple[str, str, str]) -> int:
        if f not in index:
            index[f] = len(facts)
            facts.append(f)
        return index[f]

    h = image_size
    images = np.zeros((n_images, h, h, 3), dtype=np.uint8)
    pairs = []
    for i in range(n_images):
        s, p, o = rng.integers(len(SUBJECTS)), rng.integers(len(PREDICATES)), rng.integers(len(OBJECTS))
        img = np.empty((h, h, 3), dtype=np.float32)
        img[: h // 3] = _COLOURS[s]
        img[h // 3: 2 * h // 3] = _COLOURS[p]
        img[2 * h // 3:] = _COLOURS[o]
        img += rng.normal(0, 20, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        S, P, O = SUBJECTS[s], PREDICATES[p], OBJECTS[o]
        for f in ((S, "", ""), (S, P, ""), (S, P, O)):
            pairs.append((i, fact_id(f)))
    split = rng.choice(3, size=n_images, p=[0.7, 0.1, 0.2]).astype(np.int8)
    perm = rng.permutation(len(facts))
    random_split = np.empty(len(facts), dtype=np.int16)
    random_split[perm] = np.arange(len(facts)) % num_tasks
    k_sem = min(num_tasks, len(SUBJECTS))
    semantic = np.array([SUBJECTS.index(f[0]) % k_sem for f in facts], dtype=np.int16)
    splits = {f"random{num_tasks}_seed0": random_split, f"semantic{k_sem}": semantic}
    attrs = {f"random{num_tasks}_seed0": {"kind": "random", "seed": 0, "num_tasks": num_tasks},
             f"semantic{k_sem}": {"kind": "semantic", "seed": 0, "num_tasks": k_sem}}
    disjoint = f"disjoint{num_tasks}_seed0"
    splits[disjoint] = random_split.copy()
    attrs[disjoint] = {"kind": "image_disjoint", "seed": 0, "num_tasks": num_tasks,
                       "facts_from": f"random{num_tasks}_seed0"}
    spo = np.array(pairs)[2::3]                                  # each image's ⟨S,P,O⟩ pair
    image_task = np.where(split == 0, random_split[spo[:, 1]], -1).astype(np.int16)
    write_dataset(path, images, [f"syn_{i:05d}.png" for i in range(n_images)], split, facts,
                  np.array(pairs), splits, attrs, {"source": "factmas.synthetic", "seed": seed},
                  overwrite=overwrite, split_images={disjoint: image_task})
    return Path(path)
