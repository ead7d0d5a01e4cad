"""The evaluation's ranks on several processes (torchrun), each rank scoring its share of the images.

Each rank holds the raw φ of its contiguous share of the pool images (``factmas.distributed.shard_bounds``
of ``Evaluator.image_ids``) and ψ of every fact, and runs the image → fact score blocks of its rows
against all facts (``factmas.evaluation.ranking.rank_pairs``, the blocks the one-process evaluator
runs for the same rows), so that:

* **image → fact** ranks (and LFL's) are computed where the image lives: a row's counts need only
  that row. Each rank's ``PairRanks`` go to rank 0 (a few int arrays per true pair, no scores),
  which concatenates them in rank order — the one-process ``PairRanks`` — and computes the metrics;
* **fact → image** counts are merged exactly (``factmas.evaluation.shard_ranks``): each pair's window
  estimate comes from its image's rank (an all-reduce of P float64), each rank counts its rows
  against every window, the pairs' own exact −D are all-reduced (one non-zero per pair), each rank
  resolves its window entries against them, and the integer counts are all-reduced;
* the mean pairwise cosine of the embedding (``Evaluator.evaluate_embeddings``' "embedding") from
  the all-reduced per-slot sums of unit vectors (equal to the one-process value up to the order of
  float64 additions, ~1e-16 relative).

Where the sharded counts do not apply (image pool "task", a GPU, no numba, fewer images than ranks,
or LFL's groups too large for the exact ranks), ``sharded_ranks`` returns None and the caller
gathers φ and evaluates on rank 0 as before.

May import: numpy, torch, ``factmas.distributed``, ``factmas.evaluation.ranking``,
``factmas.evaluation.retrieval``, ``factmas.evaluation.lfl``, ``factmas.evaluation.shard_ranks``,
``factmas.evaluation.count_kernel``, ``factmas.evaluation.metrics`` (``RECALL_KS``).
"""
from __future__ import annotations

import numpy as np
import torch

from factmas.distributed import all_reduce_array, gather_to_main, is_main, size
from factmas.evaluation import count_kernel
from factmas.evaluation.lfl import LFL_MAX_RANK, lfl_inputs
from factmas.evaluation.metrics import RECALL_KS
from factmas.evaluation.ranking import PairRanks, rank_pairs
from factmas.evaluation.shard_ranks import ShardColumnCounter, check_seen, local_estimates, sorted_pairs

# PairRanks' per-pair fields, concatenated across ranks in rank order
PAIR_FIELDS = ("query", "item", "neg_dist", "segment", "below", "ties", "tie_lower", "below_all",
               "ties_all", "tie_lower_all", "below_seg", "ties_seg", "tie_lower_seg", "capped")


def can_shard(ev) -> bool:
    """True where the evaluator ``ev`` can count by image shares on this process group (pool "all",
    the CPU, numba, at least one image per rank); the LFL condition is checked in ``sharded_ranks``."""
    return (ev.cfg.image_pool == "all" and ev.device.type == "cpu" and count_kernel.AVAILABLE
            and len(ev.image_ids) >= size())


def slot_sums(phi: torch.Tensor) -> np.ndarray:
    """float64 [3, d]: Σ_i φ̂_is over the rows of ``phi`` float [n, 3, d] (each slot L2-normalized),
    what ``evaluator.mean_pairwise_cosine`` needs of a share."""
    u = torch.nn.functional.normalize(phi.double(), dim=-1)
    return u.sum(0).numpy()


def mean_cosine_from_sums(total: np.ndarray, n: int) -> float:
    """``evaluator.mean_pairwise_cosine`` from the slot sums ``total`` float64 [3, d] of n rows:
    mean over slots of (‖Σ φ̂‖² − n) / (n (n − 1)); NaN for n < 2."""
    if n < 2:
        return float("nan")
    t = torch.from_numpy(np.asarray(total, np.float64))
    return float(((t.square().sum(-1) - n) / (n * (n - 1))).mean())


def narrow(x: np.ndarray) -> np.ndarray:
    """``x`` as int32 where it is int64 (counts and indexes below 2³¹: fewer bytes to send; the
    receiver casts back, the values unchanged); other arrays as they are. Raises OverflowError for
    an int64 value outside int32."""
    if x.dtype != np.int64:
        return x
    if len(x) and (x.max() > np.iinfo(np.int32).max or x.min() < np.iinfo(np.int32).min):
        raise OverflowError("sharded evaluation: a count or index beyond int32")
    return x.astype(np.int32)


def sharded_ranks(ev, ph_local: np.ndarray, ps: np.ndarray, lo: int, order: np.ndarray) -> dict | None:
    """This rank's share of the ranks of both directions, merged (a collective: every rank calls it).

    Args:
        ev: the ``Evaluator``.  ph_local: float32 [n, 3, d] unit slots of this rank's pool images
            (pool rows lo .. lo + n − 1).  ps: float32 [F, 3, d] unit slots of every fact.
        order: int64 [F] fact orders.
    Returns:
        On rank 0 what ``Evaluator._shared_ranks`` returns for the whole pool ({"i2f": PairRanks,
        "f2i": ``ColumnCounter.result``'s tuple, "lfl_in": ``lfl_inputs(ev)``}); on the other ranks
        {} ; None on every rank where LFL's groups need the top-100 search (the caller then gathers φ).
    Raises:
        RuntimeError: a pair's own value not read exactly once (the shares must cover the pool).
    """
    lfl_in = lfl_inputs(ev)
    if lfl_in["search"]:
        return None
    n_pool, hi = len(ev.image_ids), lo + len(ph_local)
    pairs = np.unique(ev.pool_pairs, axis=0)                          # (image id, fact)
    img = np.searchsorted(ev.image_ids, pairs[:, 0])                  # global pool rows
    fi = sorted_pairs(np.stack([pairs[:, 1], img], axis=1), n_pool)
    est = all_reduce_array(local_estimates(ph_local, ps, order, fi, lo), "sum")
    norm = float(np.linalg.norm(ph_local, axis=2).max(initial=0.0)) if len(ph_local) else 0.0
    row_norm = float(all_reduce_array(np.array([norm], np.float64), "max")[0])
    cols = ShardColumnCounter(ph_local, ps, order, fi, lo, n_pool, est, row_norm)
    rows = np.searchsorted(ev.image_ids, lfl_in["queries"])           # query images' pool rows
    capped = lfl_in["rank_pairs"]
    cap_rows = rows[capped[:, 0]]
    mine, mine_c = (img >= lo) & (img < hi), (cap_rows >= lo) & (cap_rows < hi)
    r = rank_pairs(ph_local, ps, np.stack([img[mine] - lo, pairs[mine, 1]], axis=1), unit=True,
                   capped_pairs=np.stack([cap_rows[mine_c] - lo, capped[mine_c, 1]], axis=1),
                   item_order=order, item_segment=lfl_in["segment"],
                   k_exact=max(5, max(RECALL_KS), LFL_MAX_RANK), max_rows=ev.cfg.search_batch,
                   device=ev.device, method="count", columns=cols)
    # fact → image: the counts each rank made alone, then the window entries against exact values
    part = cols.partial()
    above = all_reduce_array(part["above"], "sum")
    neg = all_reduce_array(part["neg"], "sum")
    check_seen(all_reduce_array(part["seen"], "sum"))
    res = cols.resolve(neg)
    resolved = {k: all_reduce_array(v, "sum") for k, v in res.items()}
    f2i = cols.finish(above, neg, resolved)
    # image → fact: each rank's pair counts, to rank 0 in rank order
    mine_r = {k: narrow(getattr(r, k)) for k in PAIR_FIELDS}         # (int32 on the wire)
    mine_r["query"] = mine_r["query"] + np.int32(lo)
    got = gather_to_main((mine_r, r.blocks, cols.stats()))
    if not is_main():
        return {}
    fields = {k: np.concatenate([g[0][k] for g in got]).astype(getattr(r, k).dtype, copy=False)
              for k in PAIR_FIELDS}
    blocks = {k: sum(g[1].get(k, 0) for g in got) for k in r.blocks}
    whole = PairRanks(**fields, segments=r.segments, blocks=blocks)
    whole.query = np.searchsorted(rows, whole.query)                  # pool row → query position
    return {"i2f": whole, "f2i": f2i, "lfl_in": lfl_in}
