"""Fitting a model's calibrator on held-out images (``factmas.evaluation.calibration`` holds the math).

The candidate pairs are what ``factmas query`` shows: the top-k facts of each image by the wildcard
distance D (exact FAISS search over all facts of the dataset, ``FactIndex``), each labelled true when
(image, fact) is one of the dataset's pairs. ``fit_on_images`` fits P(true | D) on the candidate
pairs of the given images (the val images of the run's dataset: never trained on, never tested on)
and chooses the abstention threshold p* on the same pairs.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from factmas.evaluation.calibration import (CalibrationError, Calibrator, choose_threshold,
                                            fit_isotonic, reliability, shown_stats)


def is_true_pair(pairs: np.ndarray, num_facts: int, image: np.ndarray, fact: np.ndarray) -> np.ndarray:
    """bool [N]: whether (image[n], fact[n]) is one of ``pairs`` int [P, 2] (image, fact)."""
    key = pairs[:, 0].astype(np.int64) * num_facts + pairs[:, 1].astype(np.int64)
    return np.isin(np.asarray(image, np.int64) * num_facts + np.asarray(fact, np.int64), key)


def candidate_pairs(phi: torch.Tensor | np.ndarray, psi: torch.Tensor | np.ndarray, order: np.ndarray,
                    ids: np.ndarray, pairs: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The top-k facts of each image, flattened, with their labels.

    Args:
        phi: raw image embeddings float32 [N, 3, d] of dataset images ``ids`` int [N].
        psi: raw fact embeddings float32 [F, 3, d] of every fact; order: int [F] fact orders.
        pairs: int [P, 2] the dataset's true (image, fact) pairs.  k: facts per image (≤ F used).
    Returns:
        {"distance" float64 [M], "is_true" bool [M], "image" int64 [M], "fact" int64 [M],
        "rank" int64 [M] (1-based)} with M = N · min(k, F), image by image, ascending D.
    """
    from factmas.evaluation.retrieval import FactIndex

    order = np.asarray(order, np.int64)
    d, f = FactIndex(psi, order, gpu=False).search(phi, k)
    ids = np.asarray(ids, np.int64)
    image = np.repeat(ids, d.shape[1])
    fact = f.reshape(-1).astype(np.int64)
    return {"distance": d.reshape(-1).astype(np.float64),
            "is_true": is_true_pair(pairs, len(order), image, fact),
            "image": image, "fact": fact,
            "rank": np.tile(np.arange(1, d.shape[1] + 1, dtype=np.int64), len(ids))}


def embed_candidates(embedder: Any, data: Any, ids: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """``candidate_pairs`` of dataset images ``ids`` int [N] under ``embedder.model`` (put in eval
    mode, then back), embedded by ``embedder`` (a ``factmas.model.embedder.RunEmbedder``: the run's
    flip averaging, batch size and image inputs, as in the evaluation)."""
    model = embedder.model
    was_training = model.training
    model.eval()
    try:
        order = data.order.astype(np.int64)
        psi = embedder.facts(data.tokens, order)
        phi = embedder.images(np.asarray(ids, np.int64))
    finally:
        model.train(was_training)
    return candidate_pairs(phi, psi, order, ids, data.pairs, k)


def fit_on_images(embedder: Any, data: Any, ids: np.ndarray, *, k: int,
                  target_precision: float) -> Calibrator:
    """The calibrator of ``embedder.model``: P(true | D) fitted on the top-k candidate pairs of images
    ``ids`` (``embed_candidates``) and p* chosen on them for ``target_precision`` (``choose_threshold``).

    ``meta`` records the images, pairs and true pairs used, k, the target, whether it was reached,
    what the shown answers reach on these pairs (``shown_stats``) and the in-sample Brier score.

    Raises:
        CalibrationError: no images.
    """
    ids = np.asarray(ids, np.int64)
    if not len(ids):
        raise CalibrationError("calibration: no images to fit on (the dataset has no val images)")
    c = embed_candidates(embedder, data, ids, k)
    x, y = fit_isotonic(c["distance"], c["is_true"])
    cal = Calibrator(x, y, 0.0)
    p = cal.predict(c["distance"])
    cal.threshold, reached = choose_threshold(p, c["is_true"], target_precision)
    cal.meta = {"fitted_on": {"images": int(len(ids)), "pairs": int(len(p)),
                              "true_pairs": int(c["is_true"].sum()), "k": int(k)},
                "target_precision": float(target_precision), "target_reached": reached,
                "at_threshold": shown_stats(p, c["is_true"], c["image"], cal.threshold),
                "brier": reliability(p, c["is_true"])["brier"]}
    return cal


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model's weights (keys, dtypes, shapes and bytes, in key order): the same for a
    model in memory and for it saved in any checkpoint, e.g. ``last.pt`` and the last ``task{s}.pt``."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
