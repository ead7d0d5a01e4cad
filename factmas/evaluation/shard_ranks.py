"""Fact → image ranks of sharded images, merged exactly: each rank holds a contiguous share of the pool
images (rows ``lo .. hi − 1``), scores them against every fact, and the counts add up across ranks.

For a true pair (fact f, image i) with −D value v (higher = closer), the counts of the one-process
evaluator are sums over the images j of the pool:

    below = #{j : s_jf > v},   ties = #{j : s_jf = v} (i included),   tie_lower = #{j < i : s_jf = v},

so each is the sum over ranks of the same count over the rank's own images. ``ShardColumnCounter``
is ``factmas.evaluation.column_ranks.ColumnCounter`` on one share: the windows that bound each pair's
float32 value are centred on float64 estimates given by the rank that holds the pair's image
(``local_estimates``, added up across ranks), blocks are counted with global row indexes, and the
pair's own exact value v is read on its own rank. ``partial`` gives the counts a rank can make
alone (the entries certainly above each window; its own pairs' values) and the entries inside
windows; ``merge_partials`` adds the ranks' partials (any order: integer sums and one non-zero value
per pair), ``resolve`` compares the window entries with the merged values, and ``finish`` adds those
up into ``ColumnCounter.result``'s tuple. With the same blocks (rank_pairs' blocks of one share are
the one-process blocks' rows), the counts equal the one-process ones exactly, ties included.

May import: numpy, ``factmas.evaluation.column_ranks``, ``factmas.evaluation.count_kernel`` (``pair_dots``).
"""
from __future__ import annotations

import numpy as np

from factmas.evaluation.column_ranks import ColumnCounter
from factmas.evaluation.count_kernel import pair_dots


def local_estimates(rows_hat: np.ndarray, cols_hat: np.ndarray, order: np.ndarray,
                    pairs: np.ndarray, lo: int) -> np.ndarray:
    """float64 [P]: for each true pair (fact, global image row) of ``pairs`` int [P, 2] whose image
    is in this rank's share (rows ``lo .. lo + len(rows_hat) − 1`` of ``rows_hat`` float32
    [n, 3, d] unit slots), the float64 inner product of the order-o prefixes of the image's and the
    fact's unit slots (o = ``order[fact]``, ``cols_hat`` float32 [F, 3, d]), as
    ``ColumnCounter.estimate`` computes it; 0.0 for the other pairs (so that a sum over ranks gives
    every pair's estimate exactly). ``pairs`` are taken as ``ColumnCounter`` keeps them: unique,
    sorted by fact then image (``sorted_pairs``)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    est = np.zeros(len(pairs), np.float64)
    order = np.asarray(order, np.int64)
    mine = (pairs[:, 1] >= lo) & (pairs[:, 1] < lo + len(rows_hat))
    for o in (1, 2, 3):
        sel = np.flatnonzero(mine & (order[pairs[:, 0]] == o))
        if len(sel):
            est[sel] = pair_dots(rows_hat, cols_hat, pairs[sel, 1] - lo, pairs[sel, 0],
                                 o * rows_hat.shape[2])
    return est


def sorted_pairs(pairs: np.ndarray, n_rows: int) -> np.ndarray:
    """int64 [P, 2] the distinct (fact, image row) pairs of ``pairs``, sorted by fact then image
    (``ColumnCounter``'s order)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    key = np.unique(pairs[:, 0] * n_rows + pairs[:, 1])
    return np.stack([key // n_rows, key % n_rows], axis=1)


class ShardColumnCounter(ColumnCounter):
    """``ColumnCounter`` of one rank's share of the image rows.

    Args:
        rows_hat: float32 [n, 3, d] unit slots of this rank's images (global rows lo .. lo + n − 1).
        cols_hat: float32 [F, 3, d] unit slots of every fact.  order: int [F] in 1..3.
        pairs: int [P, 2] every true (fact, global image row) pair of the pool, all ranks' (as
            ``sorted_pairs`` gives them).  lo: the share's first global row.  n_rows: all images.
        estimates: float64 [P] every pair's estimate (``local_estimates`` summed over ranks).
        row_norm: the largest slot norm of any image row, over all ranks (the windows' bound).
    ``rank_pairs`` is called on the share's rows with ``columns=`` this counter; it passes local
    block offsets, turned into global rows here. Then ``partial()`` → (across ranks)
    ``merge_partials`` → ``resolve`` → (across ranks) ``finish``.
    Raises: ValueError for pair indexes out of range or estimates of another length.
    """

    def __init__(self, rows_hat: np.ndarray, cols_hat: np.ndarray, order: np.ndarray,
                 pairs: np.ndarray, lo: int, n_rows: int, estimates: np.ndarray,
                 row_norm: float) -> None:
        super().__init__(rows_hat, cols_hat, order, pairs, n_rows=n_rows)
        self.lo = int(lo)
        key_in = sorted_pairs(pairs, n_rows)
        if len(estimates) != len(key_in):
            raise ValueError(f"{len(estimates)} estimates for {len(key_in)} distinct pairs")
        self.est_all = np.asarray(estimates, np.float64)
        self.row_norm = float(row_norm)

    def estimate(self, pair: np.ndarray, o: int) -> np.ndarray:
        """The given estimates (the rank of the pair's image computed them)."""
        return self.est_all[pair]

    def count(self, pi: int, block: np.ndarray, row0: int, pool=None, threads: int = 1) -> None:
        """``ColumnCounter.count`` of a block of the share's local rows row0 .. (global: lo + row0 ..)."""
        super().count(pi, block, self.lo + int(row0), pool, threads)

    def partial(self) -> dict:
        """What this rank counted alone, all additive across ranks: ``above`` int64 [P] entries
        certainly closer than each pair's window, ``neg`` float32 [P] the own pairs' exact −D (0.0
        elsewhere), ``seen`` int64 [P] 1 for the own pairs."""
        return {"above": self.certain_above(), "neg": self.neg.copy(),
                "seen": self.seen.astype(np.int64)}

    def resolve(self, neg: np.ndarray) -> dict:
        """This rank's window entries compared with every pair's merged exact −D ``neg`` float32 [P]:
        additive counts int64 [P] ``below`` (closer), ``ties`` (as close, the pair's own image not
        included) and ``lower`` (as close with a lower global image row). Raises RuntimeError where
        the counter stopped at ``column_ranks.WINDOW_BUDGET`` (its entries dropped)."""
        if self.over_budget:
            raise RuntimeError("sharded column counting stopped at WINDOW_BUDGET: no counts to resolve")
        return resolve_found(self.found, neg, self.image)

    def finish(self, above: np.ndarray, neg: np.ndarray, resolved: dict):
        """``ColumnCounter.result``'s tuple from the merged counts: (fact, image, neg_dist, below,
        ties, tie_lower) of every pair, sorted by fact then image."""
        below = np.asarray(above, np.int64) + resolved["below"]
        ties = 1 + np.asarray(resolved["ties"], np.int64)
        return self.fact, self.image, np.asarray(neg, np.float32), below, ties, \
            np.asarray(resolved["lower"], np.int64)


def merge_partials(parts: list[dict]) -> dict:
    """The sum of the ranks' ``ShardColumnCounter.partial`` dicts (what an all-reduce gives).
    Raises RuntimeError where a pair was not seen exactly once (every image row in one share)."""
    out = {"above": sum(p["above"] for p in parts), "neg": sum(p["neg"] for p in parts),
           "seen": sum(p["seen"] for p in parts)}
    check_seen(out["seen"])
    return out


def check_seen(seen: np.ndarray) -> None:
    """Raises RuntimeError unless every pair's own entry was read on exactly one rank."""
    bad = int((np.asarray(seen) != 1).sum())
    if bad:
        raise RuntimeError(f"sharded column counting: {bad} true pairs not read exactly once "
                           "(the shares must cover every image row once)")


def resolve_found(found: list, neg: np.ndarray, image: np.ndarray) -> dict:
    """Counts of window entries against exact values (pure): ``found`` a list of (pair int [k],
    global row int [k], −D float32 [k]) entries other than the pairs' own, ``neg`` float32 [P] the
    pairs' exact −D, ``image`` int [P] each pair's own row. Returns int64 [P] ``below`` (x > v),
    ``ties`` (x = v) and ``lower`` (x = v and row < the pair's image), as ``ColumnCounter.result``."""
    P = len(neg)
    if found:
        g = np.concatenate([f[0] for f in found]).astype(np.int64)
        row = np.concatenate([f[1] for f in found]).astype(np.int64)
        x = np.concatenate([f[2] for f in found]).astype(np.float32)
    else:
        g, row, x = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    v = np.asarray(neg, np.float32)[g]
    eq = x == v
    return {"below": np.bincount(g, weights=x > v, minlength=P).astype(np.int64),
            "ties": np.bincount(g, weights=eq, minlength=P).astype(np.int64),
            "lower": np.bincount(g, weights=eq & (row < np.asarray(image)[g]), minlength=P).astype(np.int64)}
