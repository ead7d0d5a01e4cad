"""The structured embedding space [S | P | O]: Sherlock's wildcard distance and the losses on it.

- ``distance``: the one definition of the wildcard distance D(x, f) (Sherlock, AAAI 2017, Sec. 4),
  slot masks and per-slot normalization. Its names are re-exported here, so
  ``from factmas.space import wildcard_distance`` is the usual import.
- ``loss``: the training loss on that distance (Sherlock's wildcard regression plus a contrastive
  term, and the sigmoid facts loss).

May import: torch, numpy and ``factmas.config`` (the loss's typed options) only.
Never ``factmas.model``, ``factmas.trainer`` or ``factmas.cli``.
"""
from factmas.space.distance import (EPS, NUM_SLOTS, distance_from_similarity, normalize_slots,
                                    paired_wildcard_distance, slot_mask, wildcard_distance)

__all__ = ["EPS", "NUM_SLOTS", "distance_from_similarity", "normalize_slots", "paired_wildcard_distance",
           "slot_mask", "wildcard_distance"]
