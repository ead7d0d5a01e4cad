"""The evaluation's ranks on several processes (torchrun), each rank scoring its share of the images.

Each rank holds the raw φ of its contiguous share of the pool images (``factmas.distributed.shard_bounds``
of ``Evaluator.image_ids``) and ψ of every fact, and runs the image → fact score blocks of its rows
against all facts (``factmas.evaluation.ranking.rank_pairs``, the blocks the one-process evaluator
runs for the same rows), so that:

* **image → fact** ranks, and the scores made of them, are computed where the image lives: a row's
  counts need only that row. Each rank computes its images' top-1, top-5, AP and Recall@K per task
  and over all facts (``image_to_fact.image_to_fact_rows``) and LFL's hit of each of its images' pairs
  (``lfl_stream.MemberStream``, block by block); rank 0 concatenates them in rank order (= query order, the
  one-process arrays) and takes the same means (``image_to_fact.image_to_fact_means``, ``lfl.lfl_means``);
* **fact → image** counts are merged exactly (``factmas.evaluation.shard_ranks``): each pair's window
  estimate comes from its image's rank (an all-reduce of P float64), each rank counts its rows
  against every window, the pairs' own exact −D are all-reduced (one non-zero per pair), each rank
  resolves its window entries against them, and the integer counts are all-reduced (where a rank
  kept more than ``column_ranks.WINDOW_BUDGET`` entries, every rank counts its blocks again against
  the merged exact values instead, ``factmas.evaluation.column_exact``);
* the mean pairwise cosine of the embedding (``Evaluator.evaluate_embeddings``' "embedding") from
  the all-reduced per-slot sums of unit vectors (equal to the one-process value up to the order of
  float64 additions, ~1e-16 relative).

Where the sharded counts do not apply (image pool "task", a GPU, no numba, fewer images than ranks,
or LFL's groups too large for the exact ranks, or pool pairs not sorted by image), ``sharded_ranks``
returns None and the caller gathers φ and evaluates on rank 0 as before.

May import: numpy, torch, ``factmas.distributed``, ``factmas.evaluation.ranking``,
``factmas.evaluation.retrieval``, ``factmas.evaluation.lfl``, ``factmas.evaluation.shard_ranks``,
``factmas.evaluation.column_exact``, ``factmas.evaluation.column_ranks`` (``WINDOW_BUDGET``),
``factmas.evaluation.count_kernel``, ``factmas.evaluation.metrics`` (``RECALL_KS``),
``factmas.evaluation.image_to_fact``, ``factmas.evaluation.lfl_stream``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from factmas.distributed import all_reduce_array, gather_to_main, is_main, size
from factmas.evaluation import column_ranks, count_kernel
from factmas.evaluation.column_exact import ShardExactColumnCounter
from factmas.evaluation.image_to_fact import image_to_fact_rows
from factmas.evaluation.lfl import LFL_MAX_RANK, lfl_inputs
from factmas.evaluation.lfl_stream import stream_for
from factmas.evaluation.metrics import RECALL_KS
from factmas.evaluation.ranking import rank_pairs
from factmas.evaluation.shard_ranks import ShardColumnCounter, check_seen, local_estimates, sorted_pairs

log = logging.getLogger(__name__)
UNIT_ROWS = 4096        # rows normalized at a time (as ``evaluator.unit_slots64``)


def can_shard(ev) -> bool:
    """True where the evaluator ``ev`` can count by image shares on this process group (pool "all",
    the CPU, numba, at least one image per rank); the LFL condition is checked in ``sharded_ranks``."""
    return (ev.cfg.image_pool == "all" and ev.device.type == "cpu" and count_kernel.AVAILABLE
            and len(ev.image_ids) >= size())


def slot_sums(phi: torch.Tensor) -> np.ndarray:
    """float64 [3, d]: Σ_i φ̂_is over the rows of ``phi`` float [n, 3, d] (each slot L2-normalized),
    what ``evaluator.mean_pairwise_cosine`` needs of a share."""
    u = torch.empty(phi.shape, dtype=torch.float64)        # (a float64 copy of φ avoided)
    for a in range(0, phi.shape[0], UNIT_ROWS):
        torch.nn.functional.normalize(phi[a:a + UNIT_ROWS].double(), dim=-1, out=u[a:a + UNIT_ROWS])
    return u.sum(0).numpy()


def mean_cosine_from_sums(total: np.ndarray, n: int) -> float:
    """``evaluator.mean_pairwise_cosine`` from the slot sums ``total`` float64 [3, d] of n rows:
    mean over slots of (‖Σ φ̂‖² − n) / (n (n − 1)); NaN for n < 2."""
    if n < 2:
        return float("nan")
    t = torch.from_numpy(np.asarray(total, np.float64))
    return float(((t.square().sum(-1) - n) / (n * (n - 1))).mean())


def countable(lfl_in: dict) -> bool:
    """True where ``sharded_ranks`` counts the shares (else it returns None): LFL's metric needs
    no top-100 search and the pool's pairs (``lfl.lfl_inputs``' ``pairs``) are sorted by image."""
    pp = lfl_in["pairs"]
    return not (lfl_in["search"] or (len(pp) > 1 and (np.diff(pp[:, 0]) < 0).any()))


def sharded_ranks(ev, ph_local: np.ndarray, ps: np.ndarray, lo: int, order: np.ndarray) -> dict | None:
    """This rank's share of the ranks of both directions, merged (a collective: every rank calls it).

    Args:
        ev: the ``Evaluator``.  ph_local: float32 [n, 3, d] unit slots of this rank's pool images
            (pool rows lo .. lo + n − 1).  ps: float32 [F, 3, d] unit slots of every fact.
        order: int64 [F] fact orders.
    Returns:
        On rank 0 {"f2i": ``ColumnCounter.result``'s tuple for the whole pool, "lfl_in":
        ``lfl_inputs(ev)``, "i2f_rows": ``image_to_fact_rows`` of every query image, "lfl_hits":
        LFL's (standard, generalized) hit of every pair}; on the other ranks {}; None on every rank
        where LFL's groups need the top-100 search or the pool's pairs are not sorted by image (the
        caller then gathers φ).
    Raises:
        RuntimeError: a pair's own value not read exactly once (the shares must cover the pool).
    """
    lfl_in = lfl_inputs(ev, members=False)
    pp = lfl_in["pairs"]
    if not countable(lfl_in):
        return None                              # LFL's top-100 search, or pairs not by image
    n_pool, hi = len(ev.image_ids), lo + len(ph_local)
    pairs = np.unique(ev.pool_pairs, axis=0)                          # (image id, fact)
    img = np.searchsorted(ev.image_ids, pairs[:, 0])                  # global pool rows
    fi = sorted_pairs(np.stack([pairs[:, 1], img], axis=1), n_pool)
    est = all_reduce_array(local_estimates(ph_local, ps, order, fi, lo), "sum")
    norm = float(np.linalg.norm(ph_local, axis=2).max(initial=0.0)) if len(ph_local) else 0.0
    row_norm = float(all_reduce_array(np.array([norm], np.float64), "max")[0])
    cols = ShardColumnCounter(ph_local, ps, order, fi, lo, n_pool, est, row_norm)
    rows = np.searchsorted(ev.image_ids, lfl_in["queries"])           # query images' pool rows
    mine = (img >= lo) & (img < hi)
    # LFL's member ranks of this share's test pairs (contiguous: sorted by image), block by block
    p0, p1 = local_pair_range(pp, ev.image_ids[lo:hi])
    stream = stream_for(ev, lfl_in, rows[lfl_in["row"][p0:p1]] - lo, slice(p0, p1))
    # the second pass (below) computes the same blocks without the image → fact pairs
    run = lambda c, i2f, lfl: rank_pairs(  # noqa: E731
        ph_local, ps, i2f, unit=True, capped_stream=lfl, item_order=order,
        item_segment=lfl_in["segment"], k_exact=max(5, max(RECALL_KS), LFL_MAX_RANK),
        max_rows=ev.cfg.search_batch, device=ev.device, method="count", columns=c)
    r = run(cols, np.stack([img[mine] - lo, pairs[mine, 1]], axis=1), stream)
    # fact → image: the counts each rank made alone, then the window entries against exact values
    part = cols.partial()
    neg = all_reduce_array(part["neg"], "sum")
    check_seen(all_reduce_array(part["seen"], "sum"))
    if all_reduce_array(np.array([cols.over_budget], np.int64), "max")[0]:
        # a rank passed column_ranks.WINDOW_BUDGET: every rank counts its blocks again against the
        # merged exact values (factmas.evaluation.column_exact), nothing kept
        if is_main():
            log.info("fact → image: a rank kept more than %d window entries (crowded scores), "
                     "counted in a second pass", column_ranks.WINDOW_BUDGET)
        ex = ShardExactColumnCounter(ph_local, ps, order, fi, neg, lo, n_pool)
        run(ex, np.zeros((0, 2), np.int64), None)
        f2i = ex.finish({k: all_reduce_array(v, "sum") for k, v in ex.partial().items()})
    else:
        above = all_reduce_array(part["above"], "sum")
        res = cols.resolve(neg)
        resolved = {k: all_reduce_array(v, "sum") for k, v in res.items()}
        f2i = cols.finish(above, neg, resolved)
    # image → fact and LFL: each image's scores where it lives (they need only its own pairs'
    # counts), to rank 0 in rank order = query order
    q0, q1 = np.searchsorted(rows, (lo, hi))
    r.query = np.searchsorted(rows[q0:q1] - lo, r.query)             # local row → local query
    keys = list(range(ev.num_tasks)) + ["all"]
    i2f = image_to_fact_rows(r, ev.task_of_fact, dict.fromkeys(keys), q1 - q0)
    hits = stream.hits()
    got = gather_to_main((i2f, q1 - q0, hits))
    if not is_main():
        return {}
    merged = {}
    for key in keys:
        n = sum(g[0][key][0] for g in got)
        merged[key] = (n, None if not n else [
            np.concatenate([g[0][key][1][j] if g[0][key][1] is not None else np.full(g[1], np.nan)
                            for g in got]) for j in range(6 + len(RECALL_KS))])
    lfl_hits = tuple(np.concatenate([g[2][m] for g in got]) for m in (0, 1))
    return {"f2i": f2i, "lfl_in": lfl_in, "i2f_rows": merged, "lfl_hits": lfl_hits}


def local_pair_range(pairs: np.ndarray, local_images: np.ndarray) -> tuple[int, int]:
    """(p0, p1): the test pairs ``pairs[p0:p1]`` (int [P, 2] dataset ids, sorted by image) whose
    image is in ``local_images`` (sorted dataset ids of this rank's share; contiguous)."""
    if not len(local_images):
        return 0, 0
    return (int(np.searchsorted(pairs[:, 0], local_images[0], "left")),
            int(np.searchsorted(pairs[:, 0], local_images[-1], "right")))
