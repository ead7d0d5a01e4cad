"""Reference rankings that every results table carries next to the methods.

- **image-frequency ranking**: ignores the image. For image→fact every image ranks the facts by the
  number of *training* images that carry them (most frequent first, ties tied); for fact→image all
  images tie, so a fact's AP is the fraction of its true images in the pool (sklearn's tie rule).
  A model whose image→fact numbers do not beat this row has learned nothing about the image.
- the **untrained model** is the "initial" row that the trainer evaluates before task 1.

The frequency ranking is expressed as embeddings so that the evaluator's own code scores it: every
image gets φ = e₁ in every slot, fact f gets ψ_s = (c_f, √(1 − c_f²), 0, …) in its present slots
with c_f = n_train(f) / max n_train, so its wildcard distance 2 − 2c_f falls as the frequency rises.

May import: numpy, torch, ``factmas.data.dataset``.
"""
from __future__ import annotations

import numpy as np
import torch

from factmas.data.dataset import SPLIT_NAMES, FactData


def train_frequency(data: FactData) -> np.ndarray:
    """int64 [F]: number of distinct training images (image_split 0) carrying each fact."""
    train = data.image_split[data.pairs[:, 0]] == SPLIT_NAMES.index("train")
    pairs = np.unique(data.pairs[train], axis=0)
    return np.bincount(pairs[:, 1], minlength=data.num_facts).astype(np.int64)


def frequency_embeddings(data: FactData, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(φ float32 [num_images, 3, 2], ψ float32 [F, 3, 2]) realizing the frequency ranking (module
    docstring); absent slots of ψ are zero, as the fact branch gives them."""
    freq = train_frequency(data).astype(np.float64)
    c = freq / max(freq.max(), 1.0)
    psi = np.zeros((data.num_facts, 3, 2))
    present = np.arange(3)[None, :] < data.order.astype(np.int64)[:, None]           # [F, 3]
    psi[..., 0] = np.where(present, c[:, None], 0.0)
    psi[..., 1] = np.where(present, np.sqrt(1.0 - c[:, None] ** 2), 0.0)
    phi = np.zeros((num_images, 3, 2))
    phi[..., 0] = 1.0
    return torch.from_numpy(phi).float(), torch.from_numpy(psi).float()


def frequency_baseline(evaluator) -> dict:
    """The evaluator's metrics (``Evaluator.evaluate_embeddings`` layout) of the frequency ranking
    on its image pool."""
    phi, psi = frequency_embeddings(evaluator.data, len(evaluator.image_ids))
    return evaluator.evaluate_embeddings(phi, psi, label="image-frequency ranking")
