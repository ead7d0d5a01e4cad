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

For each needle, passes over the row's entries in chunks of ``CHUNK`` that add ``x > v`` and
``x == v`` (vectorized by the compiler; 0/1 sums in float32 lanes, exact below 2^24 per chunk), a
capped needle stopping after the chunk where it reaches its cap: about 0.08 ns per entry and needle
on the Xeon of ``docs/benchmarks.md`` section 6, whatever the needles' ranks (a sort costs 3–5 ns
per entry there, 12–23 on the AMD EPYC of issue 32). Rows with more than ``linear_max`` needles
(a popular fact's true images) are skipped: sorting them is cheaper, and the caller does.

Without numba (``AVAILABLE`` is False) the caller keeps its numpy paths (selection or row sorts);
the counts are the same (``tests/evaluation/test_ranking.py`` checks both against a per-pair loop).

May import: numpy, numba (optional).
"""
from __future__ import annotations

import numpy as np

LINEAR_MAX = 48        # rows with more needles are left to the caller (a row sort is cheaper)
CHUNK = 1024           # entries per pass of the linear path (a capped needle stops between chunks)

try:                                     # optional: the ``fast`` extra
    import numba
except ImportError:                      # pragma: no cover - depends on the environment
    numba = None

AVAILABLE = numba is not None


def _count_rows_py(block, starts, vs, cap, gt, eq, r0, r1, linear_max, chunk):
    """The kernel (compiled by numba when available): fills ``gt``/``eq`` of the needles of rows
    r0..r1−1 that have at most ``linear_max`` needles (the others are left at 0)."""
    n = block.shape[1]
    for i in range(r0, r1):
        a = starts[i]
        b = starts[i + 1]
        if b == a or b - a > linear_max:
            continue
        row = block[i]
        for j in range(a, b):
            v = vs[j]
            cj = cap[j]
            tg = 0
            te = 0
            for c0 in range(0, n, chunk):
                sub = row[c0:min(n, c0 + chunk)]      # a slice: the loop below is vectorized
                cg = np.float32(0.0)
                ce = np.float32(0.0)
                for c in range(sub.shape[0]):
                    x = sub[c]
                    cg += np.float32(x > v)
                    ce += np.float32(x == v)
                tg += np.int64(cg)
                te += np.int64(ce)
                if cj > 0 and tg >= cj:
                    break
            gt[j] += tg
            eq[j] += te


if AVAILABLE:
    _count_rows_jit = numba.njit(nogil=True, cache=True, fastmath=True)(_count_rows_py)
else:                                    # pragma: no cover
    _count_rows_jit = None


def count_rows(block: np.ndarray, starts: np.ndarray, vs: np.ndarray, cap: np.ndarray | None = None,
               pool=None, threads: int = 1, linear_max: int = LINEAR_MAX,
               chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(gt, eq) int64 [len(vs)] of each needle against its row (module docstring); the needles of
    rows with more than ``linear_max`` needles get 0 (not counted).

    Args:
        block: float32 [r, n] (C-contiguous rows).  starts: int64 [r + 1], row i's needles are
            ``vs[starts[i]:starts[i+1]]``.  vs: float32 needles, ascending within each row.
        cap: int64 [len(vs)], > 0 where a needle may stop at that count (None: all exact).
        pool / threads: a ``ThreadPoolExecutor`` over which the rows are split (the kernel releases
            the GIL); None: this thread.  linear_max: see ``LINEAR_MAX``.  chunk: see ``CHUNK``
            (at most 2^24, so that the float32 sums stay exact).
    Raises:
        RuntimeError: numba is not installed (``AVAILABLE`` is False).
        ValueError: ``starts`` does not have r + 1 entries, or chunk is outside 1..2^24.
    """
    if not AVAILABLE:
        raise RuntimeError("count_rows needs numba (pip install 'factmas[fast]')")
    block = np.ascontiguousarray(block, np.float32)
    starts = np.ascontiguousarray(starts, np.int64)
    vs = np.ascontiguousarray(vs, np.float32)
    if len(starts) != len(block) + 1:
        raise ValueError(f"starts has {len(starts)} entries for {len(block)} rows (needs rows + 1)")
    if not 1 <= chunk <= 1 << 24:
        raise ValueError(f"chunk must be in 1..2^24, got {chunk}")
    cap = (np.zeros(len(vs), np.int64) if cap is None else np.ascontiguousarray(cap, np.int64))
    gt = np.zeros(len(vs), np.int64)
    eq = np.zeros(len(vs), np.int64)
    r = len(block)
    if pool is None or threads < 2 or r < 2:
        _count_rows_jit(block, starts, vs, cap, gt, eq, 0, r, linear_max, chunk)
    else:
        cuts = np.linspace(0, r, threads + 1).astype(np.int64)
        list(pool.map(lambda k: _count_rows_jit(block, starts, vs, cap, gt, eq, cuts[k], cuts[k + 1],
                                                linear_max, chunk), range(threads)))
    return gt, eq
