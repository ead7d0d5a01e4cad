"""Batches for the continual trainer, built from a ``FactData``.

A *pair batch* is B (image, fact) training pairs of the task being learned::

    images    float32 [B, ...]      the image branch's input for the pair's image
                                    (``factmas.model.features``: preprocessed pixels [B, 3, H, W], or the
                                    frozen stem's cached feature map [B, C, h, w])
    tokens    int64   [B, 3, L]     word ids of the pair's fact (0 = pad)
    order     int64   [B]           fact order 1, 2 or 3
    positive  bool    [B, B]        positive[i, j]: fact j is true for image i (any pair of the
                                    dataset, so a repeated fact or a fact implied by another image's
                                    caption is never treated as a negative)
    image_idx int64   [B]           dataset row of each image;  fact_idx int64 [B]: fact id
    candidates dict | None          when ``Batcher.candidates`` holds the facts of the task being
                                    learned (C ids): {"tokens" int64 [C, 3, L], "order" int64 [C],
                                    "own" int64 [B] column of each pair's fact, "positive" bool [B, C]}
                                    for the loss's image→all-facts term (``factmas.space.loss``)

Shuffling is seeded from (seed, stage, epoch, purpose) alone, never from a global RNG, so that a
resumed run draws exactly the batches an uninterrupted run draws. The rows of each batch are chosen
here; their image inputs are read through ``factmas.model.features.input_batches``: in this process,
or by ``train.num_workers`` ``torch.utils.data.DataLoader`` workers (the image source's
``num_workers``), in the same order and with the same values (issue 28).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from factmas.data.dataset import FactData
from factmas.data.experience import PairIndex
from factmas.model.features import PixelInputs, input_batches

PURPOSE_TRAIN = 0          # shuffling of the training pairs, one permutation per epoch
PURPOSE_CONTEXT = 1        # the pair batches a method sees in TaskContext (e.g. EWC's Fisher)


def make_rng(seed: int, stage: int, epoch: int, purpose: int = PURPOSE_TRAIN) -> np.random.Generator:
    """numpy Generator seeded from (seed, stage, epoch, purpose), all non-negative ints."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stage), int(epoch), int(purpose)]))


def stage_seed(seed: int, stage: int) -> int:
    """A 32-bit torch seed derived from (seed, stage): ``torch.manual_seed`` at each stage's start."""
    return int(np.random.SeedSequence([int(seed), int(stage), 7919]).generate_state(1)[0])


class Batcher:
    """Makes the trainer's batches from a dataset.

    Args:
        data: the dataset (``images`` uint8 [N, H, W, 3]: an array or a lazy ``H5Images``).
        device: where the tensors are put. On a GPU the uint8 images (or the feature cache), tokens
            and orders are copied to the device once, and batches are gathered there (no per-step
            host-to-device copy of pixels); on the CPU they are gathered from the numpy arrays.
        inputs: the image input source (``factmas.model.features.image_inputs``; its
            ``num_workers`` decides who reads the image rows); default: pixels, read here.
        relevance: the dataset's ``PairIndex`` (the experiences' ``relevance``, built once per run);
            default: built here from ``data.pairs``.
    """

    def __init__(self, data: FactData, device: torch.device | str = "cpu", inputs=None,
                 relevance: PairIndex | None = None) -> None:
        self.data = data
        self.device = torch.device(device)
        self.inputs = inputs if inputs is not None else PixelInputs(data, self.device)
        self.index = relevance if relevance is not None else PairIndex(data.pairs, data.num_facts)
        self.tokens = self._to(torch.from_numpy(data.tokens.astype(np.int64)))
        self.order = self._to(torch.from_numpy(data.order.astype(np.int64)))
        self.candidates: np.ndarray | None = None    # sorted fact ids; set by the trainer per stage

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.device.type == "cpu" else t.to(self.device)

    def images(self, idx: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """float32 [B, ...] image inputs of dataset rows ``idx`` on the device (``flip``: bool [B],
        mirrored left-right where True)."""
        return self.inputs.get(np.asarray(idx, np.int64), flip)

    def pair_batch(self, pairs: np.ndarray, flip: np.ndarray | None = None,
                   images: torch.Tensor | None = None) -> dict:
        """The batch dict (module docstring) of ``pairs`` int [B, 2] (image, fact); ``flip`` bool [B]
        mirrors the chosen images; ``images``: their inputs already read (``self.images(img, flip)``,
        e.g. by the loader's workers), None: read here."""
        img, fact = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
        f = torch.from_numpy(fact)
        fd = self._to(f)
        return {
            "images": self.images(img, flip) if images is None else images,
            "tokens": self.tokens[fd],
            "order": self.order[fd],
            "positive": self._to(torch.from_numpy(self.index.positive_matrix(img, fact))),
            "image_idx": torch.from_numpy(img),
            "fact_idx": f,
            "candidates": None if self.candidates is None else self._candidates(img, fact),
        }

    def _candidates(self, img: np.ndarray, fact: np.ndarray) -> dict:
        c = self.candidates
        cd = self._to(torch.from_numpy(c))
        own = np.searchsorted(c, fact)
        if np.any(own >= len(c)) or np.any(c[np.minimum(own, len(c) - 1)] != fact):
            raise ValueError("pair batch: a pair's fact is not among the candidate facts")
        return {"tokens": self.tokens[cd], "order": self.order[cd],
                "own": self._to(torch.from_numpy(own.astype(np.int64))),
                "positive": self._to(torch.from_numpy(self.index.positive_matrix(img, c)))}

    def pair_batches(self, pairs: np.ndarray, batch_size: int,
                     rng: np.random.Generator | None = None, flip: bool = False) -> Iterator[dict]:
        """Batches of ``pairs`` int [P, 2], shuffled by ``rng`` (None: in the given order).

        ``flip``: each image mirrored with probability 1/2, drawn from ``rng`` after the permutation
        (the augmentation of models whose input is a cached stem output; pixel models are augmented
        by ``factmas.trainer.augment`` instead). The last batch may be smaller than ``batch_size``; a
        final batch of one pair is merged into the batch before it (a contrastive term needs at
        least two candidates).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if flip and rng is None:
            raise ValueError("pair_batches: flip needs an rng")
        order = rng.permutation(len(pairs)) if rng is not None else np.arange(len(pairs))
        flips = rng.random(len(pairs)) < 0.5 if flip else None
        chosen = [(pairs[order[lo:hi]], None if flips is None else flips[lo:hi])
                  for lo, hi in batch_bounds(len(pairs), batch_size)]
        # the batches' image rows, read in this order by train.num_workers DataLoader workers (0:
        # here, one batch per step as before); tokens, positives and candidates are made here
        images = input_batches(self.inputs, [(p[:, 0].astype(np.int64), fl) for p, fl in chosen])
        for (p, fl), x in zip(chosen, images):
            yield self.pair_batch(p, fl, images=x)

    def image_batches(self, image_idx: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
        """float32 [B, 3, H, W] batches of the images ``image_idx``, in order (read by
        ``train.num_workers`` DataLoader workers when > 0)."""
        keys = [(np.asarray(image_idx[lo:lo + batch_size], np.int64), None)
                for lo in range(0, len(image_idx), batch_size)]
        yield from input_batches(self.inputs, keys)

    def fact_batches(self, fact_idx: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens int64 [B, 3, L], order int64 [B]) batches of the facts ``fact_idx``, in order."""
        for lo in range(0, len(fact_idx), batch_size):
            f = self._to(torch.from_numpy(np.asarray(fact_idx[lo:lo + batch_size], np.int64)))
            yield self.tokens[f], self.order[f]


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds of consecutive batches over n items; a trailing batch of 1 joins the previous."""
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds
