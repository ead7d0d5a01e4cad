"""Exact ranks of the relevant items under the wildcard distance, from blocked score matrices.

What AP, AP@k and top-k need of a full ranking is, for each relevant (query, item) pair, how many
items of the query's candidate set are closer (``below``), how many are exactly as close (``ties``,
the item itself included) and how many of those ties have a lower item index (``tie_lower``, the
position inside a tie under the stable "lower index first" order of ``factmas.evaluation.metrics``).
``factmas.evaluation.metrics`` turns these counts into the metrics (``ap_from_ranks``,
``ap_at_k_from_ranks``, ``topk_from_ranks``) with the same tie handling as the sorting functions.

How (``rank_pairs``): the queries go in blocks of rows; for each block the inner products with every
candidate are one matrix product per (segment, fact order) "part" (torch, multi-threaded, on
``device``, into kept buffers), mapped to the wildcard distance exactly as
``factmas.evaluation.retrieval`` maps FAISS's inner products, in float32: D = 2 − (2/o)·IP (Sherlock,
Elhoseiny et al. AAAI 2017, Sec. 4; ``factmas.space``). The counts are sums over columns, so each
part is counted on its own, with every relevant pair of the block's rows as a needle:

* **counting** (``factmas.evaluation.count_kernel``, the default where numba is installed): for each
  needle, compiled vectorized passes over its row that count the entries above and equal to it —
  no sort, no selection, a cost that does not depend on how well the model ranks (rows with more
  than ``count_kernel.LINEAR_MAX`` needles, e.g. a popular fact's images, are sorted instead).
  Pairs given as ``capped_pairs`` (LFL's ground-truth members, which only matter within the top
  ``k_exact``) stop counting once ``k_exact`` entries are above them;
* **selection** (``_count_rows_select``): only entries at or above a row's smallest needle can be
  above or equal to any of its needles; one comparison pass selects them, and they and the needles
  become integer keys (row, float order), of which only the selected ones are sorted and searched —
  no row is sorted;
* **sorted rows** (``_count_rows_sorted``), where selection would keep more than
  ``SELECT_FRACTION`` of the part (a model ranking some relevant item low): each row is sorted
  (numpy's vectorized sort, rows split over threads) and all needles are located at once by a
  vectorized binary search.

Both give the same counts (the tests check each against a per-pair loop, with exact ties). Memory
is bounded by ``block_elements`` per segment (the block's parts, one sorted copy, the selection).

The candidate items may be split into segments (e.g. the facts of each task): every pair gets its
counts within its item's segment, over all items (``*_all``) and within each segment (``*_seg``, from
which any union of segments follows — what LFL's candidate sets need, ``factmas.evaluation.lfl``).
Pairs need not be relevant ones: any (query, item) pair gets its exact rank.

May import: numpy, torch, ``factmas.evaluation.retrieval`` (unit slots and prefixes),
``factmas.evaluation.count_kernel`` (numba, optional); ``factmas.evaluation.column_ranks`` is
handed in by the caller (``columns``).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from factmas.evaluation import count_kernel
from factmas.evaluation.retrieval import prefix, unit_slots

BLOCK_ELEMENTS = 1 << 22     # score entries per block of rows (16 MiB of float32, twice: block + sorted)
# a block's rows are sorted only where more than this fraction of its entries reach the smallest
# relevant score of their row (an untrained model); else those entries alone are selected and sorted
SELECT_FRACTION = 0.25
SAMPLE_STRIDE = 16
METHODS = ("auto", "count", "select", "sort")


@dataclass
class PairRanks:
    """Counts of each relevant (query, item) pair (all int64 [P] unless said otherwise).

    ``query``, ``item``: the pair (indexes into the queries and items given to ``rank_pairs``),
    sorted by query then item. ``neg_dist`` float32 [P]: −D of the pair (higher = closer), exactly
    the value the counts compare with. ``segment``: the item's segment. Within that segment:
    ``below`` items strictly closer, ``ties`` items at exactly the same distance (the item
    included), ``tie_lower`` of those ties with a lower item index. ``below_all``, ``ties_all``,
    ``tie_lower_all``: the same over all items. ``tie_lower*`` is exact where ``below* < k_exact``
    (the ranks that a cut-off k ≤ k_exact can see), and at most the true count elsewhere. ``segments`` int64 [S]: the
    distinct segment ids, sorted; ``below_seg``, ``ties_seg``, ``tie_lower_seg`` int32 [P, S]: the
    counts within each segment (column j: ``segments[j]``), so that any union U of segments has
    below_U = Σ_{j∈U} below_seg[:, j] (and the same for ties and, where below_U < k_exact,
    tie_lower). ``blocks``: how many
    (block, part) matrices were counted by the compiled counting, by selection and by sorting
    (``counted_blocks``, ``selected_blocks``, ``sorted_blocks``). ``capped`` bool [P]: the pair was
    given only in ``capped_pairs`` (its counts are exact where below k_exact, else ≥ k_exact).
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
    segments: np.ndarray | None = None
    below_seg: np.ndarray | None = None
    ties_seg: np.ndarray | None = None
    tie_lower_seg: np.ndarray | None = None
    blocks: dict = field(default_factory=dict)
    capped: np.ndarray | None = None


def _scale(o: int) -> np.float32:
    return np.float32(2.0 / o)     # as numpy casts the Python float in retrieval's 2.0 − (2.0/o)·ip


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _sort_rows(block: np.ndarray, pool: ThreadPoolExecutor | None, threads: int,
               buf: np.ndarray | None = None) -> np.ndarray:
    """Sorted copy of each row of ``block`` float32 [r, n] (rows split over ``threads`` threads;
    numpy's sort releases the GIL), in ``buf`` float32 [≥ r, n] when given (no new pages)."""
    if buf is None:
        out = block.copy()
    else:
        out = buf[:len(block)]
        np.copyto(out, block)
    if pool is None or len(out) < 2:
        out.sort(axis=1)
        return out
    parts = np.array_split(np.arange(len(out)), threads)
    list(pool.map(lambda p: out[p[0]:p[-1] + 1].sort(axis=1) if len(p) else None, parts))
    return out


def rank_pairs(queries, items, pairs: np.ndarray, query_order=None, item_order=None,
               item_segment: np.ndarray | None = None, k_exact: int = 100,
               block_elements: int = BLOCK_ELEMENTS, max_rows: int | None = None,
               device: torch.device | str = "cpu", select_fraction: float = SELECT_FRACTION,
               method: str = "auto", capped_pairs: np.ndarray | None = None,
               unit: bool = False, columns=None, capped_stream=None) -> PairRanks:
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
        select_fraction: (method "select") a block's rows are sorted where more than this fraction
            of its entries reach their row's smallest relevant score (≤ 0: always sorted).
        method: "count" (``count_kernel``, needs numba), "select" (selection, else sorted rows),
            "sort" (always sorted rows), "auto" ("count" where numba is installed, else "select").
            The counts are the same.
        capped_pairs: int [E, 2] more (query, item) pairs whose counts are only needed where fewer
            than ``k_exact`` items are closer (LFL's ground-truth members): they get ranks too, exact
            below ``k_exact`` and otherwise some count ≥ ``k_exact`` (with "count": counting stops
            there). A pair also in ``pairs`` is exact. None: none.
        unit: queries and items are unit slots already (float32 numpy [·, 3, d] from
            ``factmas.evaluation.retrieval.unit_slots``, e.g. computed once for both directions).
        columns: a ``factmas.evaluation.column_ranks.ColumnCounter`` of the same queries (images)
            and items (facts), image → fact only, method "count" on the CPU: it counts the other
            direction (fact → image) in the same blocks; every query row is then computed, with a
            true item or not. None: none.
        capped_stream: instead of ``capped_pairs``, pairs given and taken block by block (image →
            fact only; ``factmas.evaluation.lfl_stream.MemberStream``): ``rows()`` their query rows,
            ``pairs(qb)`` int [E, 2] the (query, item) pairs of the block's query rows ``qb``, counted
            as ``capped_pairs`` are, in the same blocks; then ``take(keys, M, below, tie_lower,
            below_seg, tie_lower_seg, segments)`` gets the block's counts (every pair of the block,
            keys query·M + item sorted) and the returned ``PairRanks`` holds ``pairs`` only. The
            counts are those ``capped_pairs`` would give; memory is one block's pairs.
    Returns:
        ``PairRanks`` (pairs sorted by query, then item).
    Raises:
        ValueError: bad shapes, orders outside 1..3, both or neither order given, pair indexes out
        of range, unknown method.
        RuntimeError: method "count" without numba.
    """
    q_hat, x_hat = ((np.asarray(queries, np.float32), np.asarray(items, np.float32)) if unit
                    else (unit_slots(queries), unit_slots(items)))
    for z in (q_hat, x_hat):
        if z.ndim != 3 or z.shape[1] != 3:
            raise ValueError(f"embeddings must be [N, 3, d], got shape {z.shape}")
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
    if method not in METHODS:
        raise ValueError(f"method {method!r}; valid: {list(METHODS)}")
    if method == "count" and not count_kernel.AVAILABLE:
        raise RuntimeError("method 'count' needs numba (pip install 'factmas[fast]')")
    if method == "auto":
        method = "count" if count_kernel.AVAILABLE else "select"
    if method == "sort":
        select_fraction = 0.0
    if columns is not None and (method != "count" or query_order is not None
                                or torch.device(device).type != "cpu"):
        raise ValueError("columns need image → fact (item_order), method 'count' and the CPU")
    if capped_stream is not None and (capped_pairs is not None or query_order is not None):
        raise ValueError("capped_stream: image → fact (item_order) only, and not with capped_pairs")
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    extra = (np.zeros((0, 2), np.int64) if capped_pairs is None
             else np.asarray(capped_pairs, np.int64).reshape(-1, 2))
    exact_key = np.unique(pairs[:, 0] * M + pairs[:, 1])
    pairs = np.concatenate([pairs, extra])
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= Q or pairs[:, 1].max() >= M):
        raise ValueError(f"pair indexes out of range ({Q} queries, {M} items)")
    key = np.sort(pairs[:, 0] * M + pairs[:, 1])                    # sorted (query, item), once
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    pairs = np.stack([key // M, key % M], axis=1)
    capped = ~np.isin(key, exact_key)                   # only in capped_pairs
    P = len(pairs)
    out = {k: np.zeros(P, np.int64) for k in
           ("below", "ties", "tie_lower", "below_all", "ties_all", "tie_lower_all")}
    neg = np.zeros(P, np.float32)
    stats = {"counted_blocks": 0, "selected_blocks": 0, "sorted_blocks": 0}
    seg_ids = np.unique(seg)                     # a few segments
    for k in ("below_seg", "ties_seg", "tie_lower_seg"):
        out[k] = np.zeros((P, len(seg_ids)), np.int32)
    dev = torch.device(device)
    threads = _threads()
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        # query groups: one per order (fact → image) or all queries at once (image → fact)
        groups = ([(o, np.flatnonzero(order == o)) for o in (1, 2, 3)] if query_order is not None
                  else [(None, np.arange(Q))])
        has_pair = np.zeros(Q, bool)
        has_pair[pairs[:, 0]] = True                     # a query without a relevant item has no rank
        if capped_stream is not None:
            stream_rows = np.asarray(capped_stream.rows(), np.int64)
            if len(stream_rows) and (stream_rows.min() < 0 or stream_rows.max() >= Q):
                raise ValueError(f"capped_stream: query rows out of range ({Q} queries)")
            has_pair[stream_rows] = True
        for q_o, q_ids in groups:
            if columns is None:                  # (fact → image by columns needs every image)
                q_ids = q_ids[has_pair[q_ids]]
            if not len(q_ids):
                continue
            bufs: dict = {}                                         # reused per query group
            # parts: the items of one segment and one fact order, one matrix product each; the
            # counts are sums over columns, so each part is counted on its own (no concatenation)
            parts = []
            colpos = np.zeros(M, np.int64)                          # column of each item in its part
            part_of = np.zeros(M, np.int64)
            for s in seg_ids:
                ids_s = np.flatnonzero(seg == s)
                runs = ([(q_o, ids_s)] if q_o is not None else
                        [(o, ids_s[order[ids_s] == o]) for o in (1, 2, 3)])
                for o, ids in runs:
                    if len(ids):
                        if columns is not None:         # its column order (facts with more
                            ids = columns.part(len(parts), o, ids)   # true images first)
                        colpos[ids] = np.arange(len(ids))
                        part_of[ids] = len(parts)
                        parts.append((s, o, torch.from_numpy(prefix(x_hat[ids], o)).to(dev), ids,
                                      int(np.searchsorted(seg_ids, s))))
            width = max(int((seg == s_).sum()) for s_ in seg_ids)   # widest segment, as bounded before
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
                for pi, (s, o, m, cols, si) in enumerate(parts):
                    if dev.type == "cpu":                # products into kept buffers (no new pages)
                        if pi not in bufs:
                            bufs[pi] = torch.empty(min(step, len(q_ids)), len(cols))
                        ip = torch.mm(q_t[o], m.T, out=bufs[pi][:len(qb)])
                    else:
                        ip = q_t[o] @ m.T
                    if method == "count":            # the kernel maps IP to −D in place
                        values.append((pi, s, ip.cpu().numpy(), cols, si, _scale(o)))
                    else:
                        block = ip.mul_(float(_scale(o))).sub_(2.0).cpu().numpy()   # −D = (2/o)·IP − 2
                        values.append((pi, s, block, cols, si, None))
                if capped_stream is None:
                    _count_block(values, bsel, row_of, pairs, seg, part_of, colpos, neg, out, k_exact,
                                 pool, threads, select_fraction, stats, bufs, method == "count",
                                 capped[bsel], len(qb), seg_ids)
                    needles = len(bsel)
                else:                           # the block's own pairs and the stream's
                    needles = _count_block_streamed(values, bsel, qb, pairs, M, seg, part_of, colpos,
                                                    neg, out, k_exact, pool, threads, select_fraction,
                                                    stats, bufs, method == "count", seg_ids, capped_stream)
                if columns is not None:
                    for pi, _, block, _, _, sc in values:
                        if not needles:             # not mapped by the kernel: −D as it maps it
                            torch.from_numpy(block).mul_(float(sc)).sub_(2.0)
                        columns.count(pi, block, int(qb[0]), pool, threads)
    finally:
        if pool is not None:
            pool.shutdown()
    return PairRanks(query=pairs[:, 0], item=pairs[:, 1], neg_dist=neg, segment=seg[pairs[:, 1]],
                     segments=seg_ids, **out, blocks=stats, capped=capped)


def _count_block_streamed(values, bsel, qb, pairs, M, seg, part_of, colpos, neg, out, k_exact, pool,
                          threads, select_fraction, stats, bufs, use_kernel, seg_ids, stream) -> int:
    """``_count_block`` of one block's pairs ``bsel`` (rows ``qb``) together with the pairs that
    ``stream.pairs(qb)`` gives (``rank_pairs(capped_stream=)``), in block-local arrays sorted by
    key as ``capped_pairs`` would have them (the same needles in the same order: the same counts);
    the ``bsel`` pairs' counts go to ``out`` / ``neg``, every pair's to ``stream.take``. Returns the
    number of needles of the block (0: the kernel did not map it to −D)."""
    ext = np.asarray(stream.pairs(qb), np.int64).reshape(-1, 2)
    if len(ext) and (ext.min() < 0 or ext[:, 1].max() >= M or not np.isin(ext[:, 0], qb).all()):
        raise ValueError(f"capped_stream: pairs out of range or of another block ({M} items)")
    k_own = pairs[bsel, 0] * M + pairs[bsel, 1]                              # sorted, distinct
    k_ext = np.unique(ext[:, 0] * M + ext[:, 1])
    k_ext = k_ext[~np.isin(k_ext, k_own, assume_unique=True)]               # a given pair is exact
    keys = np.sort(np.concatenate([k_own, k_ext]))
    n = len(keys)
    b_pairs = np.stack([keys // M, keys % M], axis=1)
    b_out = {k: np.zeros(n, np.int64) for k in
             ("below", "ties", "tie_lower", "below_all", "ties_all", "tie_lower_all")}
    for k in ("below_seg", "ties_seg", "tie_lower_seg"):
        b_out[k] = np.zeros((n, len(seg_ids)), np.int32)
    b_neg = np.zeros(n, np.float32)
    _count_block(values, np.arange(n), np.searchsorted(qb, b_pairs[:, 0]), b_pairs, seg, part_of,
                 colpos, b_neg, b_out, k_exact, pool, threads, select_fraction, stats, bufs, use_kernel,
                 ~np.isin(keys, k_own, assume_unique=True), len(qb), seg_ids)
    own = np.searchsorted(keys, k_own)
    for k, v in b_out.items():
        out[k][bsel] = v[own]
    neg[bsel] = b_neg[own]
    stream.take(keys, M, b_out["below"], b_out["tie_lower"], b_out["below_seg"],
                b_out["tie_lower_seg"], seg_ids)
    return n


def _float_keys(x: np.ndarray) -> np.ndarray:
    """uint64 [n]: order-preserving integer keys of float32 ``x`` (a < b ⇔ key(a) < key(b), equal
    floats equal keys; −0.0 counts as +0.0; no NaN)."""
    u = (np.asarray(x, np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000)).astype(np.uint64)


def _count_rows_select(block: np.ndarray, rows_s: np.ndarray, vs: np.ndarray, starts: np.ndarray,
                       select_fraction: float):
    """(right, left) int64 [len(vs)] of the needles ``vs`` (sorted by row ``rows_s``, then value)
    against the rows of ``block`` float32 [r, n] — ``right`` = entries ≤ the needle, ``left`` =
    entries < it, as ``np.searchsorted`` of a sorted row would give — without sorting the rows, or
    None where too many entries reach the smallest needle of their row (then sorting is cheaper).

    Only entries ≥ the row's smallest needle can be above or equal to a needle: one comparison pass
    selects them; they and the needles become keys (row, float order) and the few selected keys are
    sorted and searched for the needles."""
    r, n = block.shape
    if select_fraction <= 0:
        return None
    low = np.full(r, np.inf, np.float32)                     # smallest needle of each row
    first = starts[:-1][starts[:-1] < starts[1:]]            # needles sorted by row, then value
    low[rows_s[first]] = vs[first]
    sample = block[:, ::SAMPLE_STRIDE]                       # a look at every 16th column first
    if np.count_nonzero(sample >= low[:, None]) > 1.5 * select_fraction * sample.size:
        return None
    hit = block >= low[:, None]
    n_sel = int(np.count_nonzero(hit))
    if n_sel > select_fraction * block.size:
        return None
    sr, sc = np.nonzero(hit)
    keys = np.sort((sr.astype(np.uint64) << np.uint64(32)) | _float_keys(block[sr, sc]))
    needle = (rows_s.astype(np.uint64) << np.uint64(32)) | _float_keys(vs)
    above_ge = np.searchsorted(keys, needle, "left")         # selected keys before the needle
    above_gt = np.searchsorted(keys, needle, "right")
    row_end = np.searchsorted(keys, (rows_s.astype(np.uint64) + np.uint64(1)) << np.uint64(32), "left")
    # entries ≥ v in the row: row_end − above_ge; entries > v: row_end − above_gt
    return n - (row_end - above_gt), n - (row_end - above_ge)


def _bisect_rows(flat: np.ndarray, n: int, base: np.ndarray, vs: np.ndarray, strict: bool) -> np.ndarray:
    """int64 [len(vs)]: ``np.searchsorted(row, v, "left" if strict else "right")`` of each needle v
    in its sorted row ``flat[base : base + n]``, all at once (⌈log2(n+1)⌉ vectorized steps)."""
    lo = np.zeros(len(vs), np.int64)
    hi = np.full(len(vs), n, np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        x = flat[base + np.minimum(mid, n - 1)]
        go_right = active & ((x < vs) if strict else (x <= vs))
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)


def _count_rows_sorted(srt: np.ndarray, rows_s: np.ndarray, vs: np.ndarray, starts: np.ndarray):
    """(right, left) as ``_count_rows_select`` from the sorted rows ``srt`` float32 [r, n] (binary
    search of every needle in its row at once; the left end searched only where the value occurs
    in the row)."""
    n = srt.shape[1]
    flat = srt.reshape(-1)
    base = rows_s.astype(np.int64) * n
    right = _bisect_rows(flat, n, base, vs, strict=False)
    left = right.copy()
    eq = np.flatnonzero(right > 0)
    eq = eq[flat[base[eq] + right[eq] - 1] == vs[eq]]
    if len(eq):
        left[eq] = _bisect_rows(flat, n, base[eq], vs[eq], strict=True)
    return right, left


def _count_rows_kernel(block, rows_s, vs, starts, cap, pool, threads, scale, heavy):
    """(below, ties) int64 [len(vs)] of the needles ``vs`` (sorted by row ``rows_s``, then value;
    row i's are ``vs[starts[i]:starts[i+1]]``, ``starts`` int64 [r + 1]) against the rows of
    ``block`` float32 [r, n]: entries > the needle and == it. ``count_kernel.count_rows`` counts the
    rows with at most ``LINEAR_MAX`` uncapped needles (``cap`` int64: > 0 where a needle may stop
    there); the few rows with more are sorted (``_count_rows_sorted``, exact). ``scale`` (2/o, float32):
    ``block`` holds inner products, mapped in place to −D by the kernel first. ``heavy`` bool
    [r]: ``count_kernel.heavy_rows(starts, cap)``."""
    below, ties = count_kernel.count_rows(block, starts, vs, cap, pool, threads,
                                          scale=0.0 if scale is None else float(scale), heavy=heavy)
    if heavy.any():
        per_row = np.diff(starts)
        heavy = np.flatnonzero(heavy)
        n = block.shape[1]
        needles = np.concatenate([np.arange(starts[h], starts[h + 1]) for h in heavy])
        sub_rows = np.repeat(np.arange(len(heavy)), per_row[heavy])
        sub_starts = np.r_[0, np.cumsum(per_row[heavy])]
        sub = block[heavy]
        sub.sort(axis=1)
        right, left = _count_rows_sorted(sub, sub_rows, vs[needles], sub_starts)
        below[needles] = n - right
        ties[needles] = right - left
    return below, ties


def _count_block(values, bsel, row_of, pairs, seg, part_of, colpos, neg, out, k_exact, pool,
                 threads, select_fraction, stats, bufs, use_kernel=False, capped=None,
                 rows=0, segment_ids=None) -> None:
    """Fill the counts of the pairs ``bsel`` (rows ``row_of`` of the block) from the block's
    parts ``values``: (part, segment, −D float32 [r, n], item of each column, segment's column in
    the ``*_seg`` counts, None — or with ``use_kernel``, the inner products and their scale 2/o,
    mapped to −D in place by the kernel); each item lies in one part (``part_of``, at column ``colpos``). With
    ``use_kernel``, each part's rows (``rows`` of them) are counted by ``_count_rows_kernel``
    (``capped`` bool [len(bsel)]: pairs that may stop at ``k_exact``; ``segment_ids``: the sorted
    segment ids, the columns of the ``*_seg`` counts), summed per segment and added once; else by selection
    (``_count_rows_select``), or sorted where selection would keep more than ``select_fraction``
    of the entries (or ``select_fraction`` ≤ 0). All give the same counts (capped ones: the same
    where below ``k_exact``)."""
    if not len(bsel):
        return
    items = pairs[bsel, 1]
    p_seg, p_part = seg[items], part_of[items]
    # each pair's own −D, read from the block of its part (the very value the rows hold; from the
    # inner product by the same two float32 roundings where the kernel maps the block later)
    by_part = np.argsort(p_part, kind="stable")                  # the pairs of each part, at once
    part_ids = [pi for pi, *_ in values]
    lo = np.searchsorted(p_part[by_part], part_ids, "left")
    hi = np.searchsorted(p_part[by_part], part_ids, "right")
    for k, (pi, s, block, cols, _, sc) in enumerate(values):
        mine = by_part[lo[k]:hi[k]]
        if len(mine):
            x = block[row_of[mine], colpos[items[mine]]]
            neg[bsel[mine]] = x if sc is None else x * sc - np.float32(2.0)
    v = neg[bsel]
    by_value = np.lexsort((v, row_of))                 # within a row, needles in ascending order
    vs, rows_s = v[by_value], row_of[by_value]
    starts = np.searchsorted(rows_s, np.arange(rows_s[-1] + 2))
    if use_kernel:
        starts_all = np.searchsorted(rows_s, np.arange(rows + 1))
        cap = (np.where(capped[by_value], k_exact, 0).astype(np.int64) if capped is not None
               else np.zeros(len(vs), np.int64))
        heavy = count_kernel.heavy_rows(starts_all, cap)          # the same for every part
    if use_kernel:              # the block's counts per segment, kept in the needles' order
        S = out["below_seg"].shape[1]
        seg_below = np.zeros((S, len(vs)), np.int64)          # [segment column, needle]
        seg_ties = np.zeros((S, len(vs)), np.int64)
        part_v = p_part[by_value]
        for pi, s, block, cols, si, sc in values:
            g, e = _count_rows_kernel(block, rows_s, vs, starts_all, cap, pool, threads, sc, heavy)
            seg_below[si] += g
            seg_ties[si] += e
            stats["counted_blocks"] += 1
            # ties with another item of this part (rare), where a cut-off k_exact can see them
            tied = np.flatnonzero(e > (part_v == pi))
            if len(tied):
                tied = by_value[tied[g[tied] < k_exact]]
                _add_tie_lower_at(out, bsel, tied, p_seg == s, si, block, row_of, v, cols, items)
        at = by_value                                          # needle order → bsel order
        own_col = np.searchsorted(segment_ids, p_seg[at])
        idx = bsel[at]
        needle = np.arange(len(vs))
        out["below"][idx] += seg_below[own_col, needle]
        out["ties"][idx] += seg_ties[own_col, needle]
        out["below_all"][idx] += seg_below.sum(0)
        out["ties_all"][idx] += seg_ties.sum(0)
        out["below_seg"][idx] += seg_below.T.astype(np.int32)
        out["ties_seg"][idx] += seg_ties.T.astype(np.int32)
        return
    for pi, s, block, cols, si, sc in values:
        n = block.shape[1]
        # selection where it paid off for this part's last block, else retried every 8th block
        tries = bufs.setdefault("select", {}).setdefault(pi, [0, 0])    # [blocks, failures in a row]
        tries[0] += 1
        got = (_count_rows_select(block, rows_s, vs, starts, select_fraction)
               if tries[1] == 0 or tries[0] % 8 == 0 else None)
        tries[1] = 0 if got is not None else tries[1] + 1
        if got is None:
            if bufs.get("sort") is None or bufs["sort"].size < block.size:
                bufs["sort"] = np.empty(block.size, np.float32)
            buf = bufs["sort"][:block.size].reshape(block.shape)
            got = _count_rows_sorted(_sort_rows(block, pool, threads, buf), rows_s, vs, starts)
            stats["sorted_blocks"] += 1
        else:
            stats["selected_blocks"] += 1
        right, left = got
        below = np.empty(len(bsel), np.int64)
        ties = np.empty(len(bsel), np.int64)
        below[by_value] = n - right                                  # −D strictly larger: closer
        ties[by_value] = right - left
        _add_counts(out, bsel, below, ties, p_seg == s, si, pi, p_part, k_exact, block, row_of, v,
                    cols, items)


def _add_counts(out, bsel, below, ties, own, si, pi, p_part, k_exact, block, row_of, v, cols,
                items) -> None:
    """Add one part's counts ``below`` / ``ties`` int64 [len(bsel)] of the pairs ``bsel`` to
    ``out`` (own segment where ``own``, over all, and the segment's column ``si``), and the
    position inside a tie (``_add_tie_lower``)."""
    out["below"][bsel[own]] += below[own]
    out["ties"][bsel[own]] += ties[own]
    out["below_all"][bsel] += below
    out["ties_all"][bsel] += ties
    out["below_seg"][bsel, si] += below.astype(np.int32)
    out["ties_seg"][bsel, si] += ties.astype(np.int32)
    _add_tie_lower(out, bsel, below, ties, own, si, pi, p_part, k_exact, block, row_of, v, cols, items)


def _add_tie_lower(out, bsel, below, ties, own, si, pi, p_part, k_exact, block, row_of, v, cols,
                   items) -> None:
    """Add to ``out``'s ``tie_lower*`` the items of part ``pi`` (−D ``block``, item ids ``cols``)
    at exactly the pair's −D (``v``) with a lower item index, for the pairs ``bsel`` that have
    such a tie in this part (``ties``, ``below``: its counts) where a cut-off k_exact can see it."""
    # position inside a tie (rare: exactly equal distances) where a cut-off k_exact can see it
    # (a part's count below ≤ its segment's: computed wherever the segment's is < k_exact)
    tied = np.flatnonzero(ties)                                  # usually the pair's own item only
    tied = tied[(ties[tied] > (p_part[tied] == pi)) & (below[tied] < k_exact)]   # another item at −D
    _add_tie_lower_at(out, bsel, tied, own, si, block, row_of, v, cols, items)


def _add_tie_lower_at(out, bsel, tied, own, si, block, row_of, v, cols, items) -> None:
    """Add to ``out``'s ``tie_lower*`` the items of a part (−D ``block``, item ids ``cols``) at
    exactly −D ``v`` with a lower item index, for the pairs ``bsel[tied]`` (``tied``: indexes into
    ``bsel``, the pairs with such a tie in this part; ``own`` bool [len(bsel)]: the part is of the
    pair's own segment; ``si``: the segment's column of the ``*_seg`` counts)."""
    if len(tied):
        lower = np.zeros(len(tied), np.int64)
        for c in range(0, len(tied), 64):                        # [≤64, n] comparisons at once
            j = tied[c:c + 64]
            hit = (block[row_of[j]] == v[j, None]) & (cols[None, :] < items[j, None])
            lower[c:c + 64] = hit.sum(1)
        out["tie_lower"][bsel[tied[own[tied]]]] += lower[own[tied]]
        out["tie_lower_all"][bsel[tied]] += lower
        out["tie_lower_seg"][bsel[tied], si] += lower.astype(np.int32)
