"""Exact ranks of the relevant items under the wildcard distance, from blocked score matrices.

What AP, AP@k and top-k need of a full ranking is, for each relevant (query, item) pair, how many
items of the query's candidate set are closer (``below``), how many are exactly as close (``ties``,
the item itself included) and how many of those ties have a lower item index (``tie_lower``, the
position inside a tie under the stable "lower index first" order of ``factmas.evaluation.metrics``).
``factmas.evaluation.metrics`` turns these counts into the metrics (``ap_from_ranks``,
``ap_at_k_from_ranks``, ``topk_from_ranks``) with the same tie handling as the sorting functions.

How (``rank_pairs``): the queries go in blocks of rows; for each block the inner products with every
candidate are one matrix product per fact order (torch, multi-threaded, on ``device``), mapped to
the wildcard distance exactly as ``factmas.evaluation.retrieval`` maps FAISS's inner products,
in float32: D = 2 − (2/o)·IP (Sherlock, Elhoseiny et al. AAAI 2017, Sec. 4; ``factmas.space``). Each
row of the block is sorted (numpy's vectorized sort, rows split over threads) and the relevant
pairs' distances are located in it by binary search: no per-row argsort, no merge of per-order
lists. Memory is bounded by ``block_elements`` (the block, its sorted copy and one product).

The candidate items may be split into segments (e.g. the facts of each task): every pair gets its
counts within its item's segment and over all items (``*_all``).

May import: numpy, torch, ``factmas.evaluation.retrieval`` (unit slots and prefixes).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from factmas.evaluation.retrieval import prefix, unit_slots

BLOCK_ELEMENTS = 1 << 22     # score entries per block of rows (16 MiB of float32, twice: block + sorted)


@dataclass
class PairRanks:
    """Counts of each relevant (query, item) pair (all int64 [P] unless said otherwise).

    ``query``, ``item``: the pair (indexes into the queries and items given to ``rank_pairs``),
    sorted by query then item. ``neg_dist`` float32 [P]: −D of the pair (higher = closer), exactly
    the value the counts compare with. ``segment``: the item's segment. Within that segment:
    ``below`` items strictly closer, ``ties`` items at exactly the same distance (the item
    included), ``tie_lower`` of those ties with a lower item index. ``below_all``, ``ties_all``,
    ``tie_lower_all``: the same over all items. ``tie_lower*`` is exact where ``below* < k_exact``
    (the ranks that a cut-off k ≤ k_exact can see) and 0 elsewhere.
    """
    query: np.ndarray
    item: np.ndarray
    neg_dist: np.ndarray
    segment: np.ndarray
    below: np.ndarray
    ties: np.ndarray
    tie_lower: np.ndarray
    below_all: np.ndarray
    ties_all: np.ndarray
    tie_lower_all: np.ndarray


def _scale(o: int) -> np.float32:
    return np.float32(2.0 / o)     # as numpy casts the Python float in retrieval's 2.0 − (2.0/o)·ip


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _sort_rows(block: np.ndarray, pool: ThreadPoolExecutor | None, threads: int) -> np.ndarray:
    """Sorted copy of each row of ``block`` float32 [r, n] (rows split over ``threads`` threads;
    numpy's sort releases the GIL)."""
    out = block.copy()
    if pool is None or len(out) < 2:
        out.sort(axis=1)
        return out
    parts = np.array_split(np.arange(len(out)), threads)
    list(pool.map(lambda p: out[p[0]:p[-1] + 1].sort(axis=1) if len(p) else None, parts))
    return out


def rank_pairs(queries, items, pairs: np.ndarray, query_order=None, item_order=None,
               item_segment: np.ndarray | None = None, k_exact: int = 100,
               block_elements: int = BLOCK_ELEMENTS, max_rows: int | None = None, device: torch.device | str = "cpu") -> PairRanks:
    """Exact counts of closer and equally close items for every relevant (query, item) pair.

    The distance of query q and item x is the wildcard distance with the fact's order o (exactly one
    side is the facts: ``query_order`` for fact → image, ``item_order`` for image → fact):
    D = 2 − (2/o)·⟨[q̂_S|…]_{:o}, [x̂_S|…]_{:o}⟩ in float32 (module docstring).

    Args:
        queries: float [Q, 3, d] raw embeddings (torch or numpy).  items: float [M, 3, d] raw.
        pairs: int [P, 2] relevant (query index, item index) pairs; duplicates are dropped.
        query_order / item_order: int [Q] / [M] fact orders in {1, 2, 3}; exactly one is given.
        item_segment: int [M] segment of each item (None: one segment).
        k_exact: ``tie_lower`` is computed where fewer than this many items are closer.
        block_elements: score entries per block of query rows (bounds memory).
        max_rows: at most this many query rows per block (None: no limit but ``block_elements``).
        device: where the matrix products run (the counting runs on the CPU).
    Returns:
        ``PairRanks`` (pairs sorted by query, then item).
    Raises:
        ValueError: bad shapes, orders outside 1..3, both or neither order given, pair indexes out
        of range.
    """
    q_hat, x_hat = unit_slots(queries), unit_slots(items)
    Q, M = len(q_hat), len(x_hat)
    if (query_order is None) == (item_order is None):
        raise ValueError("give exactly one of query_order (fact → image) and item_order (image → fact)")
    side_n = Q if query_order is not None else M
    order = np.asarray(query_order if query_order is not None else item_order, np.int64).reshape(-1)
    if len(order) != side_n or not np.isin(order, (1, 2, 3)).all():
        raise ValueError(f"order must give 1, 2 or 3 for each of {side_n} facts")
    seg = (np.zeros(M, np.int64) if item_segment is None
           else np.asarray(item_segment, np.int64).reshape(-1))
    if len(seg) != M:
        raise ValueError(f"item_segment has {len(seg)} entries for {M} items")
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= Q or pairs[:, 1].max() >= M):
        raise ValueError(f"pair indexes out of range ({Q} queries, {M} items)")
    key = np.sort(pairs[:, 0] * M + pairs[:, 1])                    # sorted (query, item), once
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    pairs = np.stack([key // M, key % M], axis=1)
    P = len(pairs)
    out = {k: np.zeros(P, np.int64) for k in
           ("below", "ties", "tie_lower", "below_all", "ties_all", "tie_lower_all")}
    neg = np.zeros(P, np.float32)
    seg_ids = np.unique(seg)                     # a few segments
    dev = torch.device(device)
    threads = _threads()
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        # query groups: one per order (fact → image) or all queries at once (image → fact)
        groups = ([(o, np.flatnonzero(order == o)) for o in (1, 2, 3)] if query_order is not None
                  else [(None, np.arange(Q))])
        has_pair = np.zeros(Q, bool)
        has_pair[pairs[:, 0]] = True                     # a query without a relevant item has no rank
        for q_o, q_ids in groups:
            q_ids = q_ids[has_pair[q_ids]]
            if not len(q_ids):
                continue
            # segments: (segment, [(order, item ids)]) with the items of each order as one product
            segs = []
            colpos = np.zeros(M, np.int64)                          # column of each item in its segment
            for s in seg_ids:
                ids_s = np.flatnonzero(seg == s)
                runs = ([(q_o, ids_s)] if q_o is not None else
                        [(o, ids_s[order[ids_s] == o]) for o in (1, 2, 3)])
                runs = [(o, ids) for o, ids in runs if len(ids)]
                mats = [torch.from_numpy(prefix(x_hat[ids], o)).to(dev) for o, ids in runs]
                cols = np.concatenate([ids for _, ids in runs])
                colpos[cols] = np.arange(len(cols))
                segs.append((s, runs, mats, cols))
            width = max(len(c) for *_, c in segs)
            step = max(1, block_elements // max(1, width))
            if max_rows is not None:
                step = max(1, min(step, int(max_rows)))
            sel = np.flatnonzero(np.isin(pairs[:, 0], q_ids))      # pairs of this query group
            p_q = pairs[sel, 0]
            for b0 in range(0, len(q_ids), step):
                qb = q_ids[b0:b0 + step]
                lo, hi = np.searchsorted(p_q, qb[0], "left"), np.searchsorted(p_q, qb[-1], "right")
                bsel = sel[lo:hi]                                   # pairs of these rows (sorted)
                row_of = np.searchsorted(qb, pairs[bsel, 0])
                q_t = {o: torch.from_numpy(prefix(q_hat[qb], o)).to(dev) for o in (1, 2, 3)}
                values = []
                for s, runs, mats, cols in segs:
                    parts = []
                    for (o, _), m in zip(runs, mats):
                        ip = q_t[o] @ m.T
                        parts.append(ip.mul_(float(_scale(o))).sub_(2.0))   # −D = (2/o)·IP − 2
                    block = (parts[0] if len(parts) == 1 else torch.cat(parts, 1)).cpu().numpy()
                    values.append((s, block, cols, _sort_rows(block, pool, threads)))
                _count_block(values, bsel, row_of, pairs, seg, colpos, neg, out, k_exact)
    finally:
        if pool is not None:
            pool.shutdown()
    return PairRanks(query=pairs[:, 0], item=pairs[:, 1], neg_dist=neg, segment=seg[pairs[:, 1]],
                     **out)


def _count_block(values, bsel, row_of, pairs, seg, colpos, neg, out, k_exact) -> None:
    """Fill the counts of the pairs ``bsel`` (rows ``row_of`` of the block) from the block's
    segments ``values``: (segment, −D float32 [r, n], item of each column, sorted rows)."""
    if not len(bsel):
        return
    items = pairs[bsel, 1]
    p_seg = seg[items]
    # each pair's own −D, read from the block of its segment (the very value the rows hold)
    for s, block, cols, _ in values:
        mine = np.flatnonzero(p_seg == s)
        if len(mine):
            neg[bsel[mine]] = block[row_of[mine], colpos[items[mine]]]
    v = neg[bsel]
    by_value = np.lexsort((v, row_of))                 # within a row, needles in ascending order:
    vs, rows_s = v[by_value], row_of[by_value]         # numpy's binary search then narrows faster
    starts = np.searchsorted(rows_s, np.arange(rows_s[-1] + 2))
    for s, block, cols, srt in values:
        n = srt.shape[1]
        right = np.empty(len(bsel), np.int64)
        for r in range(rows_s[-1] + 1):
            a, b = starts[r], starts[r + 1]
            if a < b:
                right[a:b] = np.searchsorted(srt[r], vs[a:b], "right")
        # ties: the left end only where the value occurs in the row (always in the pair's segment)
        eq = np.flatnonzero(right > 0)
        eq = eq[srt[rows_s[eq], right[eq] - 1] == vs[eq]]
        left = right.copy()
        if len(eq):
            e_starts = np.searchsorted(rows_s[eq], np.arange(rows_s[-1] + 2))
            r_eq = rows_s[eq]                                       # sorted
            for r in r_eq[np.r_[True, r_eq[1:] != r_eq[:-1]]]:
                j = eq[e_starts[r]:e_starts[r + 1]]
                left[j] = np.searchsorted(srt[r], vs[j], "left")
        below = np.empty(len(bsel), np.int64)
        ties = np.empty(len(bsel), np.int64)
        below[by_value] = n - right                                  # −D strictly larger: closer
        ties[by_value] = right - left
        own = p_seg == s
        out["below"][bsel[own]] = below[own]
        out["ties"][bsel[own]] = ties[own]
        out["below_all"][bsel] += below
        out["ties_all"][bsel] += ties
        # position inside a tie (rare: exactly equal distances) where a cut-off k_exact can see it
        tied = np.flatnonzero((ties > own) & (below < k_exact))      # another item at −D exactly
        if len(tied):
            lower = np.zeros(len(tied), np.int64)
            for c in range(0, len(tied), 64):                        # [≤64, n] comparisons at once
                j = tied[c:c + 64]
                hit = (block[row_of[j]] == v[j, None]) & (cols[None, :] < items[j, None])
                lower[c:c + 64] = hit.sum(1)
            out["tie_lower"][bsel[tied[own[tied]]]] = lower[own[tied]]
            out["tie_lower_all"][bsel[tied]] += lower
