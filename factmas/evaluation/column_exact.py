"""The fact → image column counting's second pass, against exact own values (issue 28).

``factmas.evaluation.column_ranks.ColumnCounter`` keeps the entries that fall inside another true
pair's rounding window until every pair's own −D is known. On crowded scores (nearly collapsed
embeddings, as an untrained model's: docs/benchmarks.md § 11) those entries grow with
(images in a window) × (true pairs), quadratic in the images; past ``column_ranks.WINDOW_BUDGET``
the counter drops them (``over_budget``) but still reads every pair's own exact float32 −D.

``ExactColumnCounter`` then counts the **same blocks again** (the caller runs
``factmas.evaluation.ranking.rank_pairs`` a second time with the same arguments, so the products,
hence every float32 −D, are the same bit for bit) with each pair's window collapsed to its exact
value v: [lo, h] = [v, v]. The column kernel counts the entries x > v (closer) as it counts those
above a window, and the entries with x = v are the window hits, resolved at once into ties and ties
with a lower image index (nothing kept): the same comparisons as ``ColumnCounter.result``'s, so the
same counts. Memory: the blocks' own (``eval.search_batch`` rows × the facts, O(F)) and O(P) counts.
``ShardExactColumnCounter`` is the same on one rank's share of the image rows
(``factmas.evaluation.shard_eval``), its counts additive across ranks.

May import: numpy, ``factmas.evaluation.column_ranks``.
"""
from __future__ import annotations

import numpy as np

from factmas.evaluation.column_ranks import ColumnCounter


class ExactColumnCounter(ColumnCounter):
    """``ColumnCounter`` whose windows are the pairs' exact −D (a second pass over the same blocks).

    Args:
        rows_hat, cols_hat, order, pairs, n_rows: as ``ColumnCounter`` (the first pass's).
        neg: float32 [P] every pair's own exact −D, in ``ColumnCounter``'s pair order (sorted by
            fact, then image): the first pass's ``neg``.
    Raises:
        ValueError: ``neg`` not of length P (and ``ColumnCounter``'s errors).
    ``result`` raises RuntimeError where a block's own entry differs from ``neg`` (the second pass
    did not compute the same blocks) or a pair was never counted.
    """

    def __init__(self, rows_hat: np.ndarray, cols_hat: np.ndarray, order: np.ndarray,
                 pairs: np.ndarray, neg: np.ndarray, n_rows: int | None = None) -> None:
        super().__init__(rows_hat, cols_hat, order, pairs, n_rows=n_rows)
        neg = np.asarray(neg, np.float32).reshape(-1)
        if len(neg) != len(self.fact):
            raise ValueError(f"{len(neg)} exact values for {len(self.fact)} distinct pairs")
        self.known = neg
        self.budget = None                                  # nothing is kept: no limit
        P = len(self.fact)
        self.below_x, self.ties_x, self.lower_x = (np.zeros(P, np.int64) for _ in range(3))

    def windows(self, pair: np.ndarray, col: np.ndarray, o: int, ids: np.ndarray):
        """(pair, col, h, lo) sorted by column, then exact value: h = lo = the pair's −D."""
        srt = np.lexsort((self.known[pair], col))
        pair, col = pair[srt], col[srt]
        h = self.known[pair].copy()
        return pair, col, h, h.copy()

    def keep(self, g: np.ndarray, row: np.ndarray, x: np.ndarray) -> None:
        """Resolves window hits at once: (pair ids, rows, −D) compared with the exact values."""
        v = self.known[g]
        eq = x == v
        P = len(self.fact)
        self.below_x += np.bincount(g, weights=x > v, minlength=P).astype(np.int64)
        self.ties_x += np.bincount(g, weights=eq, minlength=P).astype(np.int64)
        self.lower_x += np.bincount(g, weights=eq & (row < self.image[g]), minlength=P).astype(np.int64)

    def result(self):
        """``ColumnCounter.result``'s tuple (fact, image, neg_dist, below, ties, tie_lower)."""
        if not self.seen.all():
            raise RuntimeError(f"column counting (second pass): {int((~self.seen).sum())} true pairs "
                               "never counted (every image row must be counted once)")
        self.check_same()
        below = self.certain_above() + self.below_x
        return self.fact, self.image, self.known.copy(), below, 1 + self.ties_x, self.lower_x.copy()

    def check_same(self) -> None:
        """Raises RuntimeError where an own entry read in this pass differs from the first's."""
        bad = self.seen & (self.neg != self.known)
        if bad.any():
            raise RuntimeError(f"column counting (second pass): {int(bad.sum())} own scores differ "
                               "from the first pass (the blocks must be computed the same way)")


class ShardExactColumnCounter(ExactColumnCounter):
    """``ExactColumnCounter`` of one rank's share of the image rows (global rows lo .. lo + n − 1):
    ``pairs`` every (fact, global image row) pair of the pool, ``neg`` their merged exact −D,
    ``n_rows`` all images. ``partial()`` gives additive counts; ``finish`` the merged tuple."""

    def __init__(self, rows_hat: np.ndarray, cols_hat: np.ndarray, order: np.ndarray,
                 pairs: np.ndarray, neg: np.ndarray, lo: int, n_rows: int) -> None:
        super().__init__(rows_hat, cols_hat, order, pairs, neg, n_rows=n_rows)
        self.lo = int(lo)

    def count(self, pi: int, block: np.ndarray, row0: int, pool=None, threads: int = 1) -> None:
        """``ColumnCounter.count`` of a block of the share's local rows row0 .. (global: lo + row0 ..)."""
        super().count(pi, block, self.lo + int(row0), pool, threads)

    def partial(self) -> dict:
        """int64 [P] each, additive across ranks: ``below`` (closer images of this share), ``ties``
        (as close, the pair's own image not included), ``lower`` (as close, lower global row),
        ``seen`` (1 for the pairs whose image is in this share)."""
        self.check_same()
        return {"below": self.certain_above() + self.below_x, "ties": self.ties_x.copy(),
                "lower": self.lower_x.copy(), "seen": self.seen.astype(np.int64)}

    def finish(self, merged: dict):
        """``ColumnCounter.result``'s tuple from the ranks' summed ``partial`` dicts."""
        return (self.fact, self.image, self.known.copy(), np.asarray(merged["below"], np.int64),
                1 + np.asarray(merged["ties"], np.int64), np.asarray(merged["lower"], np.int64))
