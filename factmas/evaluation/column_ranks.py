"""Fact → image ranks from the image → fact score blocks: one matrix product for both directions.

``factmas.evaluation.ranking.rank_pairs`` computes, block of image rows by block, the −D of every
image against every fact (one product per segment and fact order, "part"). Column c of a part holds
one fact's −D to the block's images: the very scores fact → image ranks. ``ColumnCounter`` counts, in
those same blocks, how many images are closer to a fact than each of its true images, so that the
second direction needs no product of its own (issue 32: ≤ 3 × the score matrix at 50k × 100k).

The difficulty: a true image's own score lies in its own block, usually a later or an earlier one,
so its exact float32 value is not known while the other blocks are counted. Each true pair (fact f,
image i) of order o gets a **window** that certainly holds it: the float64 inner product of the
float32 unit slots (exact products, rounding ≈ 1e−16) ± δ, with δ = 2·γ_L·B where γ_L·Σ|a_k b_k| is
the classical bound on a float32 dot product of L = o·d terms in any summation order, FMA or not
(γ_L = L·u / (1 − L·u), u = 2⁻²⁴; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
eq. 3.5), B = o·max‖a_s‖·max‖b_s‖ ≥ Σ|a_k b_k| (Cauchy–Schwarz per slot), the factor 2 a margin
(``test_window_delta_bounds_float32_dot_products`` measures torch's error at a tenth of it), widened by one float32 step each way and mapped to −D by the
kernel's two roundings (monotone). Then, per true pair:

* entries above the window's top are certainly closer (``count_kernel._count_cols_py``: vectorized
  over a tile of columns, one level per k-th true image of each column; a fact with more than
  ``HEAVY`` true images is counted by a binary search per entry instead);
* the pair's own entry, read from its own block, gives its exact −D; it is the one window hit a
  column expects there. Columns with any other entry inside a window in a block (rare: the windows
  are a few 1e−5 wide) are scanned (``_collect_cols_py``), and those entries kept with their image
  and value, compared at the end with the pair's exact value: closer, tied, tied with a lower image
  index. The counts are exact, ties included.

If a pair's own entry were ever outside its window (the bound violated), ``count`` raises
RuntimeError rather than give a wrong rank.

Memory: the kept window entries grow with (images in a window) × (true pairs), quadratic in the
images where embeddings are nearly collapsed (an untrained model; docs/benchmarks.md § 11). Past
``WINDOW_BUDGET`` entries the counter drops them and stops counting (``over_budget``); it still
reads every pair's own exact −D, so that the caller can count a second pass over the same blocks
against those exact values (``factmas.evaluation.column_exact``), which keeps nothing.

May import: numpy, ``factmas.evaluation.count_kernel``.
"""
from __future__ import annotations

import numpy as np

from factmas.evaluation import count_kernel

U32 = 2.0 ** -24            # unit roundoff of float32
HEAVY = 48                  # facts with more true images are counted by a binary search per entry
WINDOW_BUDGET = 1_000_000   # window entries kept (20 B each: ≈ 20 MB) before the counter gives up
COLLECT = 1 << 20           # window entries collected per call (a block's scan, in pieces)


def window_delta(length: int, bound_ab: float) -> float:
    """δ = 2·γ_L·bound_ab: twice the bound on |fl(a·b) − a·b| of a float32 dot product of ``length``
    terms with Σ|a_k b_k| ≤ ``bound_ab``, in any order (Higham 2002, eq. 3.5)."""
    lu = length * U32
    return 2.0 * lu / (1.0 - lu) * bound_ab


def to_neg_dist(ip: np.ndarray, o: int) -> np.ndarray:
    """float32 −D = fl(fl((2/o)·IP) − 2) of float32 inner products, as the kernel maps them."""
    return np.asarray(ip, np.float32) * np.float32(2.0 / o) - np.float32(2.0)


class ColumnCounter:
    """Counts of the true images of every fact (the columns) from the image-row blocks.

    Args:
        rows_hat: float32 [N, 3, d] unit slots of the images, the rows of ``rank_pairs``' blocks.
        cols_hat: float32 [F, 3, d] unit slots of the facts (the items).  order: int [F] in 1..3.
        pairs: int [P, 2] true (fact, image row) pairs (duplicates dropped).
        n_rows: the number of image rows the pairs index (default ``len(rows_hat)``; larger where
            ``rows_hat`` is one rank's share, ``factmas.evaluation.shard_ranks``).
    ``rank_pairs`` calls ``part(pi, o, ids)`` for each part (it returns the column order to use),
    ``count(pi, block, row0)`` for each block (after the block is −D), then ``result()``.
    """

    def __init__(self, rows_hat: np.ndarray, cols_hat: np.ndarray, order: np.ndarray,
                 pairs: np.ndarray, n_rows: int | None = None) -> None:
        if not count_kernel.AVAILABLE:
            raise RuntimeError("column counting needs numba (pip install 'factmas[fast]')")
        self.rows_hat, self.cols_hat = rows_hat, cols_hat
        self.order = np.asarray(order, np.int64)
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        n_rows = len(rows_hat) if n_rows is None else int(n_rows)     # (a share's: all images)
        n_cols = len(cols_hat)
        if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= n_cols
                           or pairs[:, 1].max() >= n_rows):
            raise ValueError(f"column pair indexes out of range ({n_cols} facts, {n_rows} images)")
        key = np.unique(pairs[:, 0] * n_rows + pairs[:, 1])
        self.fact, self.image = key // n_rows, key % n_rows          # sorted by fact, then image
        self.parts: dict = {}
        self.found: list = []                                        # (pair ids, rows, values)
        self.neg = np.zeros(len(self.fact), np.float32)              # each pair's own −D
        self.seen = np.zeros(len(self.fact), bool)
        self.blocks = 0
        self.row_norm: float | None = None                           # largest slot norm of a row
        self.kept = 0                                                # entries in ``found``
        self.budget: int | None = WINDOW_BUDGET                      # (None: no limit)
        self.over_budget = False                                     # past WINDOW_BUDGET: stopped

    def part(self, pi: int, o: int, ids: np.ndarray) -> np.ndarray:
        """Set up part ``pi`` (facts ``ids`` of order ``o``); returns ``ids`` reordered (facts with
        more true images first), the column order the part's blocks must use."""
        ids = np.asarray(ids, np.int64)
        lo_p, hi_p = np.searchsorted(self.fact, ids, "left"), np.searchsorted(self.fact, ids, "right")
        n_c = hi_p - lo_p
        by_n = np.argsort(-n_c, kind="stable")
        ids, lo_p, n_c = ids[by_n], lo_p[by_n], n_c[by_n]
        col = np.repeat(np.arange(len(ids)), n_c)
        first = np.r_[0, np.cumsum(n_c)[:-1]].astype(np.int64)
        pair = np.arange(int(n_c.sum()), dtype=np.int64) - np.repeat(first - lo_p, n_c)
        if not len(pair):                                            # no true image in this part
            self.parts[pi] = {"pair": pair}
            return ids
        pair, col, h, lo = self.windows(pair, col, o, ids)
        start = np.r_[0, np.cumsum(n_c)].astype(np.int64)
        heavy = n_c > HEAVY
        nh = int(heavy.sum())                                        # heavy columns come first
        light_n = n_c[nh:]
        levels = int(light_n.max()) if len(light_n) else 0
        lvl_len = np.array([(light_n > k).sum() for k in range(levels)], np.int64)
        n = len(ids)
        lvl_h = np.zeros((levels, n), np.float32)
        lvl_lo = np.zeros((levels, n), np.float32)
        rank_in_col = np.arange(len(pair)) - start[col]
        light = col >= nh
        lvl_h[rank_in_col[light], col[light]] = h[light]
        lvl_lo[rank_in_col[light], col[light]] = lo[light]
        by_img = np.argsort(self.image[pair], kind="stable")         # needles by their own row
        hoff = np.zeros(max(nh, 1), np.int64)
        hoff[:nh] = np.r_[0, np.cumsum(n_c[:nh] + 1)[:-1]] if nh else 0
        self.parts[pi] = {
            "o": o, "n": n, "nh": nh, "pair": pair, "col": col, "rank": rank_in_col, "h": h, "lo": lo,
            "start": start, "lvl_len": lvl_len, "lvl_h": lvl_h, "lvl_lo": lvl_lo,
            "cnt": np.zeros((levels, n), np.int32), "win": None,
            "hist": np.zeros(int((n_c[:nh] + 1).sum()) + 1, np.int64), "hoff": hoff,
            "hstart": start[:nh + 1].copy(), "j_by_img": by_img, "img_sorted": self.image[pair][by_img]}
        return ids

    def windows(self, pair: np.ndarray, col: np.ndarray, o: int, ids: np.ndarray):
        """(pair, col, h, lo) of a part's true pairs sorted by column, then window: each pair's
        float32 −D window [lo, h] (module docstring; ``factmas.evaluation.column_exact`` gives
        exact values instead), sorted within a column by h and by lo."""
        est = self.estimate(pair, o)
        # Σ|a_k b_k| ≤ Σ_slots ‖a_s‖·‖b_s‖ (Cauchy–Schwarz) ≤ o · (largest slot norms' product)
        if self.row_norm is None:
            self.row_norm = float(np.linalg.norm(self.rows_hat, axis=2).max(initial=0.0))
        col_norm = float(np.linalg.norm(self.cols_hat[ids][:, :o], axis=2).max(initial=0.0))
        delta = window_delta(o * self.rows_hat.shape[2], o * self.row_norm * col_norm * (1 + 1e-6))
        srt = np.lexsort((est, col))                                 # by column, then estimate
        pair, col, est = pair[srt], col[srt], est[srt]
        hi32 = np.nextafter(np.float32(est + delta), np.float32(np.inf))
        lo32 = np.nextafter(np.float32(est - delta), np.float32(-np.inf))
        h, lo = to_neg_dist(hi32, o), to_neg_dist(lo32, o)
        return pair, col, h, lo

    def estimate(self, pair: np.ndarray, o: int) -> np.ndarray:
        """float64 [len(pair)]: the float64 inner product of the order-``o`` prefixes of pairs
        ``pair``'s image and fact unit slots (the centre of each pair's window). A subclass whose
        rows are a share of the images (``factmas.evaluation.shard_ranks``) gives them otherwise."""
        return count_kernel.pair_dots(self.rows_hat, self.cols_hat, self.image[pair], self.fact[pair],
                                      o * self.rows_hat.shape[2])

    def stats(self) -> dict:
        """Counted blocks, entries found inside another pair's window (scanned and resolved), and
        whether the counter stopped at ``WINDOW_BUDGET`` (its counts then unusable)."""
        return {"column_blocks": self.blocks, "window_entries": self.kept,
                "over_budget": self.over_budget}

    def count(self, pi: int, block: np.ndarray, row0: int, pool=None, threads: int = 1) -> None:
        """Count part ``pi``'s block ``block`` float32 [r, n] of −D (rows row0 .. row0 + r − 1)."""
        p = self.parts[pi]
        if not len(p["pair"]):
            return
        if self.over_budget:             # past the budget: only the own values (a second pass's)
            self.own_values(p, block, row0)
            return
        args = (p["nh"], p["lvl_len"], p["lvl_h"], p["lvl_lo"], p["cnt"], p["win"], p["hstart"],
                p["h"], p["lo"], p["hist"], p["hoff"])
        n = p["n"]
        nsub = -(-len(block) // count_kernel.COL_ROWS)
        if p["win"] is None or p["win"].shape[0] < nsub:
            p["win"] = np.zeros((nsub, n), np.int32)
        win = p["win"][:nsub]
        args = args[:5] + (win,) + args[6:]
        if pool is None or threads < 2:
            count_kernel._count_cols_jit(block, 0, n, *args)
        else:
            cuts = np.linspace(0, n, threads + 1).astype(np.int64)
            list(pool.map(lambda k: count_kernel._count_cols_jit(block, cuts[k], cuts[k + 1], *args),
                          range(threads)))
        col, g = self.own_values(p, block, row0)
        flat = win.reshape(-1)
        own = (self.image[g] - row0) // count_kernel.COL_ROWS * n + col     # own entries' cells
        cells = p.get("cells")
        if cells is None or len(cells) < flat.size:
            cells = p["cells"] = np.empty(flat.size, np.int64)
            p["cell_n"] = np.empty(flat.size, np.int64)
        k, total = count_kernel._hit_cells_jit(flat, own, cells, p["cell_n"])   # (zeroes ``win``)
        if k and self.budget is not None and self.kept + total > self.budget:
            self.over_budget, self.found, self.kept = True, [], 0      # the caller's second pass
            self.blocks += 1
            return
        sel, cum = cells[:k], np.cumsum(p["cell_n"][:k])    # (rows, column) with another hit
        a = 0
        while a < k:                 # the cells' entries, at most about COLLECT at a time
            base = int(cum[a - 1]) if a else 0
            b = max(a + 1, int(np.searchsorted(cum, base + COLLECT, "right")))
            part_total = int(cum[b - 1]) - base
            out_j, out_row = np.empty(part_total, np.int64), np.empty(part_total, np.int64)
            out_x = np.empty(part_total, np.float32)
            got = count_kernel._collect_cols_jit(block, sel[a:b] % n, sel[a:b] // n, row0, p["start"],
                                                 p["h"], p["lo"], out_j, out_row, out_x, 0)
            if got != part_total:                                    # the two phases disagree
                raise RuntimeError(f"column counting: {got} window entries found, {part_total} counted")
            g = p["pair"][out_j]
            other = out_row != self.image[g]                         # own entries are known
            self.keep(g[other], out_row[other], out_x[other])
            a = b
        self.blocks += 1

    def own_values(self, p: dict, block: np.ndarray, row0: int):
        """Reads the exact −D of part ``p``'s pairs whose own entry lies in this block (rows row0 ..)
        into ``neg`` / ``seen``; returns their (columns, pair ids). Raises RuntimeError where one
        falls outside its window."""
        a, b = np.searchsorted(p["img_sorted"], (row0, row0 + len(block)))
        js = p["j_by_img"][a:b]
        col, g = p["col"][js], p["pair"][js]
        v = block[self.image[g] - row0, col]
        if not ((v >= p["lo"][js]) & (v <= p["h"][js])).all():
            raise RuntimeError("column counting: a true pair's score fell outside its rounding "
                               "window (please report: the error bound is violated)")
        self.neg[g] = v
        self.seen[g] = True
        return col, g

    def keep(self, g: np.ndarray, row: np.ndarray, x: np.ndarray) -> None:
        """Keeps window entries (pair ids, rows, −D) other than the pairs' own until ``result``."""
        self.found.append((g, row, x))
        self.kept += len(g)

    def certain_above(self) -> np.ndarray:
        """int64 [P]: per pair, the entries above its window (certainly closer)."""
        above = np.zeros(len(self.fact), np.int64)
        for p in self.parts.values():
            if not len(p["pair"]):
                continue
            nh, col, rank = p["nh"], p["col"], p["rank"]
            light = col >= nh
            above[p["pair"][light]] = p["cnt"][rank[light], col[light]]
            for c in range(nh):                                      # suffix sums of the histogram
                k = p["start"][c + 1] - p["start"][c]
                hist = p["hist"][p["hoff"][c]:p["hoff"][c] + k + 1]
                suffix = np.cumsum(hist[::-1])[::-1]                 # suffix[m] = Σ_{m' ≥ m}
                js = np.arange(p["start"][c], p["start"][c + 1])
                above[p["pair"][js]] = suffix[rank[js] + 1]
        return above

    def result(self):
        """(fact int64 [P], image int64 [P], neg_dist float32 [P], below, ties, tie_lower int64 [P])
        of every true pair, sorted by fact then image: ``below`` images strictly closer to the fact,
        ``ties`` at exactly the same −D (the image itself included), ``tie_lower`` of those with a
        lower image index. Raises RuntimeError where a pair's own entry was not inside its window,
        or the counter stopped at ``WINDOW_BUDGET`` (``over_budget``: count a second pass instead,
        ``factmas.evaluation.column_exact``)."""
        if self.over_budget:
            raise RuntimeError(f"column counting stopped: more than {self.budget} window entries")
        P = len(self.fact)
        below = self.certain_above()
        if not self.seen.all():
            raise RuntimeError(f"column counting: {int((~self.seen).sum())} true pairs never counted "
                               "(every image row must be counted once)")
        if self.found:
            g = np.concatenate([f[0] for f in self.found])
            row = np.concatenate([f[1] for f in self.found])
            x = np.concatenate([f[2] for f in self.found])
        else:
            g, row, x = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        v = self.neg[g]
        below += np.bincount(g, weights=x > v, minlength=P).astype(np.int64)
        eq = x == v
        ties = 1 + np.bincount(g, weights=eq, minlength=P).astype(np.int64)     # the image itself
        lower = np.bincount(g, weights=eq & (row < self.image[g]), minlength=P).astype(np.int64)
        return self.fact, self.image, self.neg.copy(), below, ties, lower
