"""Counting, without sorting, how many entries of a row lie above / at each of the row's needles.

``count_rows(block, starts, vs, cap)``: for row i of ``block`` float32 [r, n] and each needle v of
that row (``vs[starts[i]:starts[i+1]]``, ascending), the number of entries strictly greater than v
(``gt``) and exactly equal to v (``eq``), both int64 [len(vs)]. These are what
``factmas.evaluation.ranking`` turns into exact ranks (a needle's ``below`` is ``gt``, its ``ties``
``eq``; ``np.searchsorted`` of the sorted row would give right = n − gt, left = n − gt − eq).
Floats compare as IEEE floats (−0.0 == +0.0); no NaN is expected (the evaluator's scores have none).
A needle with ``cap[j] > 0`` may stop counting once ``gt`` reaches ``cap[j]``: its ``gt`` is then
exact where it is below ``cap[j]`` and otherwise some value ≥ ``cap[j]`` (``eq`` likewise partial).

How: one compiled loop per row (numba, when it is installed: the ``fast`` extra), never a sort.

For each needle, a pass over the row's entries that adds ``x > v`` and ``x == v`` (vectorized by
the compiler; 0/1 sums in int32 lanes, exact: rows have at most 2^24 entries), a capped needle
going in chunks of ``CHUNK`` and stopping after the chunk where it reaches its cap: about 0.06
(micro-benchmark) to 0.15 ns per entry and needle on the Xeon of ``docs/benchmarks.md`` section 6, whatever the needles' ranks (a sort costs 3–5 ns
per entry there, 12–23 on the AMD EPYC of issue 32). Rows with more than ``linear_max`` uncapped needles
(a popular fact's true images) are skipped: sorting them is cheaper, and the caller does.

Without numba (``AVAILABLE`` is False) the caller keeps its numpy paths (selection or row sorts);
the counts are the same (``tests/evaluation/test_ranking.py`` checks both against a per-pair loop).

May import: numpy, numba (optional).
"""
from __future__ import annotations

import numpy as np

LINEAR_MAX = 48        # rows with more needles are left to the caller (a row sort is cheaper)
CHUNK = 256            # entries per pass for a capped needle (it stops between chunks)
COL_TILE = 256         # columns per tile of the column counting (its levels stay in the L1 cache)
COL_ROWS = 16          # rows per window count of the column counting (what phase B rescans; < 256)

try:                                     # optional: the ``fast`` extra
    import numba
except ImportError:                      # pragma: no cover - depends on the environment
    numba = None

AVAILABLE = numba is not None


def _count_rows_py(block, starts, vs, cap, gt, eq, r0, r1, skip, chunk, scale):
    """The kernel (compiled by numba when available): maps rows r0..r1−1 to −D in place where
    ``scale`` ≠ 0, then fills ``gt``/``eq`` of the needles of those rows where ``skip`` is 0
    (the others are left at 0)."""
    n = block.shape[1]
    two = np.float32(2.0)
    for i in range(r0, r1):
        row = block[i]
        if scale != 0:                          # −D = (2/o)·IP − 2: two float32 roundings, no FMA
            for c in range(n):
                row[c] = row[c] * scale - two
        a = starts[i]
        b = starts[i + 1]
        if b == a or skip[i]:
            continue
        for j in range(a, b):
            v = vs[j]
            cj = cap[j]
            tg = 0
            te = 0
            step = chunk if cj > 0 else max(n, 1)    # an exact needle: one pass over the row
            for c0 in range(0, n, step):
                sub = row[c0:min(n, c0 + step)]      # a slice: the loop below is vectorized
                cg = np.int32(0)                     # int32 lanes: compare, then subtract the
                ce = np.int32(0)                     # all-ones mask (1.3x the float32 lanes' speed)
                for c in range(sub.shape[0]):
                    x = sub[c]
                    cg = np.int32(cg + np.int32(x > v))
                    ce = np.int32(ce + np.int32(x == v))
                tg += np.int64(cg)
                te += np.int64(ce)
                if cj > 0 and tg >= cj:
                    break
            gt[j] += tg
            eq[j] += te


# fast-math without "contract": the sums may be reordered (exact 0/1 sums), but x·s − 2 must stay
# two roundings (an FMA would change −D, and with it the exact ties)
_FLAGS = {"reassoc", "nnan", "ninf", "nsz", "arcp"}


def _compile(fn, fastmath=None, fallback=None):
    """``fn`` compiled by numba (nogil; ``fastmath`` flags if given): once per machine through
    numba's on-disk cache, or per process where no cache folder is writable; ``fallback`` (None or
    the pure-Python ``fn``) without numba."""
    if not AVAILABLE:                    # pragma: no cover
        return fallback
    opts = {"nogil": True, **({"fastmath": fastmath} if fastmath else {})}
    try:
        return numba.njit(cache=True, **opts)(fn)
    except RuntimeError:
        return numba.njit(cache=False, **opts)(fn)


_count_rows_jit = _compile(_count_rows_py, _FLAGS)


def count_rows(block: np.ndarray, starts: np.ndarray, vs: np.ndarray, cap: np.ndarray | None = None,
               pool=None, threads: int = 1, linear_max: int = LINEAR_MAX,
               chunk: int = CHUNK, scale: float = 0.0,
               heavy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(gt, eq) int64 [len(vs)] of each needle against its row (module docstring); the needles of
    rows with more than ``linear_max`` uncapped needles get 0 (not counted: ``heavy_rows``).

    Args:
        block: float32 [r, n] (C-contiguous rows).  starts: int64 [r + 1], row i's needles are
            ``vs[starts[i]:starts[i+1]]``.  vs: float32 needles, ascending within each row.
        cap: int64 [len(vs)], > 0 where a needle may stop at that count (None: all exact).
        pool / threads: a ``ThreadPoolExecutor`` over which the rows are split (the kernel releases
            the GIL); None: this thread.  linear_max: see ``LINEAR_MAX``.  chunk: see ``CHUNK``
            (at most 2^24, the row limit).
        scale: ≠ 0: ``block`` holds inner products, and each row is first mapped in place to
            −D = fl(fl(scale·IP) − 2) in float32 (exactly ``ip.mul_(scale).sub_(2.0)`` of torch, as
            ``factmas.evaluation.ranking`` maps them); the needles are −D values.
        heavy: bool [r], ``heavy_rows(starts, cap, linear_max)`` when the caller has it already.
    Raises:
        RuntimeError: numba is not installed (``AVAILABLE`` is False).
        ValueError: ``block`` not a C-contiguous float32 array or with rows over 2^24 entries,
            ``starts`` without r + 1 entries, chunk outside 1..2^24.
    """
    if not AVAILABLE:
        raise RuntimeError("count_rows needs numba (pip install 'factmas[fast]')")
    if not (isinstance(block, np.ndarray) and block.dtype == np.float32 and block.flags.c_contiguous):
        raise ValueError("block must be a C-contiguous float32 numpy array (counted in place)")
    starts = np.ascontiguousarray(starts, np.int64)
    vs = np.ascontiguousarray(vs, np.float32)
    if len(starts) != len(block) + 1:
        raise ValueError(f"starts has {len(starts)} entries for {len(block)} rows (needs rows + 1)")
    if len(block) and block.shape[1] > 1 << 24:
        raise ValueError(f"rows of {block.shape[1]} entries: at most 2^24 (the counting kernel's limit)")
    if not 1 <= chunk <= 1 << 24:
        raise ValueError(f"chunk must be in 1..2^24, got {chunk}")
    cap = (np.zeros(len(vs), np.int64) if cap is None else np.ascontiguousarray(cap, np.int64))
    gt = np.zeros(len(vs), np.int64)
    eq = np.zeros(len(vs), np.int64)
    r = len(block)
    skip = (heavy_rows(starts, cap, linear_max) if heavy is None else heavy).astype(np.uint8)
    if pool is None or threads < 2 or r < 2:
        _count_rows_jit(block, starts, vs, cap, gt, eq, 0, r, skip, chunk, np.float32(scale))
    else:
        cuts = np.linspace(0, r, threads + 1).astype(np.int64)
        list(pool.map(lambda k: _count_rows_jit(block, starts, vs, cap, gt, eq, cuts[k], cuts[k + 1],
                                                skip, chunk, np.float32(scale)), range(threads)))
    return gt, eq


def heavy_rows(starts: np.ndarray, cap: np.ndarray | None, linear_max: int = LINEAR_MAX) -> np.ndarray:
    """bool [r]: the rows with more than ``linear_max`` uncapped needles (``cap`` 0; capped ones
    stop early, so they do not count), which ``count_rows`` leaves to the caller (a sort is cheaper)."""
    starts = np.asarray(starts, np.int64)
    per_row = np.diff(starts)
    if cap is None:
        return per_row > linear_max
    row = np.repeat(np.arange(len(per_row)), per_row)
    return np.bincount(row[np.asarray(cap) == 0], minlength=len(per_row)) > linear_max


# ---------------------------------------------------------------------------------------------
# Columns: the other direction's counts from the same block (issue 32, one product for both)
#
# A block [r, n] of −D holds, in column c, the scores of fact c against the block's images. A fact's
# true images ("column needles") lie in other blocks too, so their exact float32 values are not known
# while a block is counted: each needle j has instead a window [lo_j, hi_j] that certainly holds it
# (a float64 estimate ± a rounding-error bound, ``factmas.evaluation.column_ranks``). Entries above
# hi_j are certainly closer; entries inside the window are kept and resolved at the end against the
# exact value (read from the needle's own entry, itself inside its window). Columns are ordered by
# their number of needles, the "heavy" ones (more than ``linear_max``) first.

def _windows_py(h, lo, a, b, x):
    """(m, e) for the windows a..b−1 of one column, sorted by their top ``h`` (and so by their
    bottom ``lo``: every window of a part has the same width before rounding): m = the first
    window with h[m] ≥ x (so m − a windows lie entirely below x: x is above them), and the windows
    m..e−1 are those holding x (lo ≤ x ≤ h; a run, as both ends are sorted). One binary search
    and a walk, shared by both column kernels (phase A's heavy columns, phase B)."""
    m = a
    hi = b
    while m < hi:
        mid = (m + hi) // 2
        if h[mid] < x:
            m = mid + 1
        else:
            hi = mid
    e = m
    while e < b and lo[e] <= x:
        e += 1
    return m, e


_windows = _compile(_windows_py, fallback=_windows_py)


def _count_cols_py(block, c0, c1, nh, lvl_len, lvl_h, lvl_lo, cnt, win, hstart, hh, hlo, hist, hoff):
    """Phase A over the block's rows and columns c0..c1−1: light columns (c ≥ nh): for each level k
    (the k-th needle of every column with more than k needles, columns nh .. nh+lvl_len[k]−1),
    ``cnt[k, c] += x > hi``; heavy columns (c < nh, needles ``hstart[c]:hstart[c+1]`` sorted by hi):
    ``hist[hoff[c] + m] += 1`` with m = #(hi < x). Both: ``win[i // COL_ROWS, c]`` += the windows
    (lo ≤ x ≤ hi) holding the entry x of row i (so that phase B scans only those rows)."""
    r = block.shape[0]
    for c in range(c0, min(c1, nh)):                       # heavy columns: binary search per entry
        a = hstart[c]
        b = hstart[c + 1]
        lo_min = hlo[a]
        for i in range(r):
            x = block[i, c]
            if x < lo_min:
                continue                                   # below every window: m = 0, no window
            m, e = _windows(hh, hlo, a, b, x)
            hist[hoff[c] + m - a] += 1
            win[i // COL_ROWS, c] += e - m
    nsub = (r + COL_ROWS - 1) // COL_ROWS
    # per (level, 16 rows) and column, two counts packed in one int32 lane: the entries above the
    # window's top (bits 0-7) and those at or above its bottom (bits 8+; ≥ the first, as lo ≤ hi),
    # each at most COL_ROWS < 256: one load and one store of the lane per entry instead of two
    pk = np.zeros(COL_TILE, np.int32)
    for t0 in range(max(c0, nh), c1, COL_TILE):            # light columns, a tile at a time
        w = min(c1, t0 + COL_TILE) - t0
        for k in range(lvl_len.shape[0]):
            wk = min(w, nh + lvl_len[k] - t0)              # the tile's columns with a k-th needle
            if wk <= 0:
                break
            hk = lvl_h[k, t0:t0 + wk]
            lk = lvl_lo[k, t0:t0 + wk]
            ck = cnt[k, t0:t0 + wk]
            for sb in range(nsub):
                pk[:wk] = 0
                for i in range(sb * COL_ROWS, min(r, (sb + 1) * COL_ROWS)):
                    row = block[i, t0:t0 + wk]
                    for c in range(wk):                    # vectorized by the compiler
                        x = row[c]
                        pk[c] += np.int32(x > hk[c]) + (np.int32(x >= lk[c]) << 8)
                ws = win[sb, t0:t0 + wk]
                for c in range(wk):
                    above = pk[c] & 255
                    ck[c] += above
                    ws[c] += (pk[c] >> 8) - above          # entries inside the window


def _collect_cols_py(block, cols, subs, row0, start, ch, clo, out_j, out_row, out_x, pos):
    """Phase B: for each (column ``cols[t]``, rows ``subs[t]``·COL_ROWS …) with a window hit other
    than a pair's own entry, every entry inside some needle's window (needles ``start[c]:start[c+1]``
    sorted by hi): (needle, row0 + i, x) written at ``out_*[pos:]``; returns the new ``pos``."""
    r = block.shape[0]
    for t in range(cols.shape[0]):
        c = cols[t]
        a = start[c]
        b = start[c + 1]
        lo_min = clo[a]
        hi_max = ch[b - 1]
        for i in range(subs[t] * COL_ROWS, min(r, (subs[t] + 1) * COL_ROWS)):
            x = block[i, c]
            if x < lo_min or x > hi_max:
                continue                                   # outside every window of the column
            m, e = _windows(ch, clo, a, b, x)
            for j in range(m, e):
                out_j[pos] = j
                out_row[pos] = row0 + i
                out_x[pos] = x
                pos += 1
    return pos


_count_cols_jit = _compile(_count_cols_py, _FLAGS)
_collect_cols_jit = _compile(_collect_cols_py)


def _hit_cells_py(flat, own, cells, cell_n):
    """After phase A: the cells of ``flat`` (the window counts ``win``, flattened, int32) holding a
    window hit other than a pair's own entry (``own`` int64: the cell of each own entry counted in
    this block; it holds one hit there), written to ``cells[:k]``, and each such cell's hits, own
    entries included, to ``cell_n[:k]`` (int64); returns (k, the hits of those cells, own entries
    included: what phase B will find). Leaves ``flat`` all zero."""
    for c in own:
        flat[c] -= 1
    k = 0
    total = 0
    for i in range(flat.shape[0]):
        f = flat[i]
        if f != 0:
            if f > 0:
                cells[k] = i
                cell_n[k] = f
                total += f
                flat[i] = -2 - k                           # marked with its place: own entries below
                k += 1
            else:                                          # (cannot be: each own entry is a hit)
                flat[i] = 0
    for c in own:
        m = flat[c]
        if m <= -2:
            cell_n[-2 - m] += 1
            total += 1
    for t in range(k):
        flat[cells[t]] = 0
    return k, total


_hit_cells_jit = _compile(_hit_cells_py)


def _pair_dots_py(a, b, ia, ib, length, out):
    """out[t] = Σ_{k < length} float64(a[ia[t], k]) · float64(b[ib[t], k]), summed in order k."""
    for t in range(ia.shape[0]):
        ra = a[ia[t]]
        rb = b[ib[t]]
        acc = 0.0
        for k in range(length):
            acc += np.float64(ra[k]) * np.float64(rb[k])
        out[t] = acc


_pair_dots_jit = _compile(_pair_dots_py)          # no fast-math: summed in order


def pair_dots(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray, length: int) -> np.ndarray:
    """float64 [len(ia)]: the float64 inner products of the first ``length`` entries of rows
    ``a[ia[t]]`` and ``b[ib[t]]`` (float32 [·, m] C-contiguous, e.g. unit slots [·, 3, d] seen as
    [·, 3·d], whose first o·d entries are the order-o prefix), summed in order (each product of two
    float32 is exact in float64). What ``factmas.evaluation.column_ranks`` centres each true pair's
    window on, without gathering the rows (numba; without it, a numpy einsum of the gathered rows).

    Raises:
        ValueError: ``length`` outside 0..m, or index arrays of different lengths.
    """
    a2 = np.ascontiguousarray(a, np.float32).reshape(len(a), -1)
    b2 = np.ascontiguousarray(b, np.float32).reshape(len(b), -1)
    ia, ib = np.asarray(ia, np.int64).reshape(-1), np.asarray(ib, np.int64).reshape(-1)
    if len(ia) != len(ib):
        raise ValueError(f"{len(ia)} row indexes of a against {len(ib)} of b")
    if not 0 <= length <= min(a2.shape[1], b2.shape[1]):
        raise ValueError(f"length {length} outside 0..{min(a2.shape[1], b2.shape[1])}")
    if not AVAILABLE:                    # pragma: no cover - depends on the environment
        return np.einsum("ij,ij->i", a2[ia, :length].astype(np.float64), b2[ib, :length].astype(np.float64))
    out = np.empty(len(ia), np.float64)
    _pair_dots_jit(a2, b2, ia, ib, int(length), out)
    return out
