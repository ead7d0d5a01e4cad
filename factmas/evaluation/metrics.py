"""Retrieval and continual-learning metrics: pure numpy functions.

Ranking metrics take **scores** where higher means more relevant (pass ``-distance`` for distances)
and a boolean relevance array of the same shape; one row is one query.

Tie handling (documented once, used everywhere):

* ``average_precision`` (full ranking) treats items with equal scores as one threshold, exactly as
  ``sklearn.metrics.average_precision_score`` does: AP = Σ_n (R_n − R_{n−1}) · P_n over the distinct
  score thresholds n, so the AP does not depend on the order of items inside a tie.
* Rank-based metrics (``ap_at_k``, ``topk_accuracy``) need a strict ranking: items are sorted by
  descending score with a *stable* sort, so ties are broken by the lower item index first. A search
  index (FAISS) returns such a ranked list directly; ``ap_at_k_ranked`` takes it as is.

A query with no relevant item has no AP (NaN); ``mean_ap`` averages over the queries that have one.

Continual-learning metrics use the accuracy matrix R, float [T, T], with R[i, j] the score on task j
after training tasks 0..i (Lopez-Paz & Ranzato, NeurIPS 2017, Sec. 2), and b, float [T], the score of
the model before any training (the "initial" row).
"""
from __future__ import annotations

import numpy as np

# the names of the reported metrics (their records: factmas.evaluation.metric_specs), re-exported
# for the modules that list them: METRICS the core ones, RECALL_METRICS Recall@K for K in RECALL_KS
# (missing from rows recorded before they existed), HEADLINE the one tables lead with
from factmas.evaluation.metric_specs import HEADLINE, METRICS, RECALL_KS, RECALL_METRICS  # noqa: F401


def _rows(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    r = np.asarray(relevant).astype(bool)
    if s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and relevant {r.shape} must have the same shape")
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be [N] or [Q, N], got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return np.atleast_2d(s), np.atleast_2d(r)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray | float:
    """Full-ranking average precision of each query, ties as one threshold (as sklearn).

    AP = Σ_n (R_n − R_{n−1}) · P_n over the distinct score thresholds n in descending order, where P_n
    and R_n are precision and recall of the items scoring ≥ the n-th threshold (Manning et al.,
    *Introduction to Information Retrieval*, 2008, Sec. 8.4; sklearn's ``average_precision_score``).

    Args:
        scores: float [N] or [Q, N], higher = more relevant.  relevant: bool, same shape.
    Returns:
        float for 1-D input, else float64 [Q]; NaN for a query with no relevant item.
    Raises:
        ValueError: shapes differ, are not 1-D/2-D, or scores contain NaN.
    """
    s, r = _rows(scores, relevant)
    q, n = s.shape
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    r_sorted = np.take_along_axis(r, order, axis=1)
    tp = np.cumsum(r_sorted, axis=1, dtype=np.float64)               # [Q, N]
    # the last item of each group of equal scores closes a threshold
    is_end = np.ones((q, n), dtype=bool)
    if n > 1:
        is_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    tp_end = np.where(is_end, tp, 0.0)
    prev_tp = np.zeros_like(tp)
    if n > 1:
        prev_tp[:, 1:] = np.maximum.accumulate(tp_end, axis=1)[:, :-1]   # tp at the previous threshold
    precision = tp / np.arange(1, n + 1)[None, :]
    n_pos = r.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(is_end, (tp - prev_tp) * precision, 0.0).sum(axis=1) / n_pos
    ap = np.where(n_pos > 0, ap, np.nan)
    return float(ap[0]) if np.ndim(scores) == 1 else ap


def ap_at_k_ranked(ranked_relevant: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k of ranked lists: (1 / min(k, R)) · Σ_{i ≤ k} P(i) · rel(i).

    P(i) is the precision of the top i items and R the query's total number of relevant items (the
    standard AP@k, e.g. the Lifelong Fact Learning evaluation, Elhoseiny et al. ACCV 2018).

    Args:
        ranked_relevant: bool [Q, K] relevance of each query's ranked list, best first; only the first
            k columns are used (a shorter list counts the missing ranks as not relevant).
        num_relevant: int [Q], R of each query (relevant items in the whole pool).
        k: cut-off, ≥ 1.
    Returns:
        float64 [Q]; NaN where R == 0.
    Raises:
        ValueError: k < 1, or shapes disagree.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rel = np.atleast_2d(np.asarray(ranked_relevant).astype(bool))[:, :k]
    n_rel = np.asarray(num_relevant, dtype=np.float64).reshape(-1)
    if len(n_rel) != len(rel):
        raise ValueError(f"{len(rel)} ranked lists but {len(n_rel)} relevant counts")
    hits = np.cumsum(rel, axis=1, dtype=np.float64)
    prec = hits / np.arange(1, rel.shape[1] + 1)[None, :]
    denom = np.minimum(k, n_rel)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (prec * rel).sum(axis=1) / denom
    return np.where(n_rel > 0, ap, np.nan)


def ap_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray | float:
    """AP@k (see ``ap_at_k_ranked``) from scores; ties broken by lower index (stable sort).

    Args:
        scores: float [N] or [Q, N], higher = more relevant.  relevant: bool, same shape.  k: ≥ 1.
    Returns:
        float for 1-D input, else float64 [Q]; NaN for a query with no relevant item.
    """
    s, r = _rows(scores, relevant)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    ap = ap_at_k_ranked(np.take_along_axis(r, order, axis=1), r.sum(axis=1), k)
    return float(ap[0]) if np.ndim(scores) == 1 else ap


def mean_ap(ap: np.ndarray) -> float:
    """Mean of the per-query APs that are defined (NaN ignored); NaN if none is."""
    ap = np.asarray(ap, dtype=np.float64)
    ok = ~np.isnan(ap)
    return float(ap[ok].mean()) if ok.any() else float("nan")


def image_to_fact_map(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Image → fact mAP: each image (row) ranks the facts (columns); mean AP over images with a fact.

    Args:
        scores: float [N_images, F], higher = the fact fits the image better.  relevant: bool, same.
    """
    return mean_ap(average_precision(np.atleast_2d(scores), np.atleast_2d(relevant)))


def fact_to_image_map(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Fact → image mAP: each fact (column) ranks the images (rows); mean AP over facts with an image.

    Args:
        scores: float [N_images, F] (the same layout as ``image_to_fact_map``).  relevant: bool, same.
    """
    return mean_ap(average_precision(np.atleast_2d(scores).T, np.atleast_2d(relevant).T))


def topk_accuracy(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one relevant item among their top k (any of them is a hit).

    Ties broken by lower index (stable sort). Queries with no relevant item are left out; NaN if
    every query is.

    Args:
        scores: float [Q, N], higher = more relevant.  relevant: bool [Q, N].  k: ≥ 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s, r = _rows(scores, relevant)
    has = r.any(axis=1)
    if not has.any():
        return float("nan")
    order = np.argsort(-s[has], axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(r[has], order, axis=1).any(axis=1).mean())


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Recall@K of a retrieval direction: the fraction of queries whose first relevant item is
    ranked within the top K.

    The definition of the cross-modal retrieval tables (Flickr30k / MS-COCO: Karpathy & Fei-Fei,
    CVPR 2015, Sec. 4; Faghri et al., VSE++, BMVC 2018, Sec. 4: "R@K is the percentage of queries
    for which the correct item is retrieved in the closest K points"), and of the continual
    vision-language work that reports R@1/5/10 (CTP, Mod-X). With several relevant items a query
    counts once, when any of them is in its top K; so it equals ``topk_accuracy`` (and image → fact
    R@1 / R@5 equal the evaluator's top-1 / top-5). Ties broken by lower index (stable sort); queries
    without a relevant item left out; NaN if every query is.

    Args:
        scores: float [Q, N], higher = more relevant.  relevant: bool [Q, N].  k: K ≥ 1.
    Returns:
        float in [0, 1] (or NaN).
    Raises:
        ValueError: k < 1, shapes differ, NaN scores.
    """
    return topk_accuracy(scores, relevant, k)


# ---------------------------------------------------------------- from the ranks of the relevant items
# The same metrics computed from counts instead of sorted rows (``factmas.evaluation.ranking``): for
# each relevant (query, item) pair, ``below`` = items of the query's ranking strictly closer (higher
# score), ``ties`` = items with exactly its score (itself included), ``tie_lower`` = those ties with a
# lower item index. Pairs are given as flat arrays (one entry per pair, any order); every relevant item
# of a query must have its pair (R = the number of pairs of the query).


def _by_query(query: np.ndarray, n_queries: int) -> np.ndarray:
    query = np.asarray(query, np.int64).reshape(-1)
    if len(query) and (query.min() < 0 or query.max() >= n_queries):
        raise ValueError(f"query indexes must lie in [0, {n_queries})")
    return query


def ap_from_ranks(query: np.ndarray, score: np.ndarray, below: np.ndarray, ties: np.ndarray,
                  n_queries: int) -> np.ndarray:
    """Full-ranking AP of each query from its relevant pairs' ranks, ties as one threshold (sklearn).

    Equal to ``average_precision`` on the full rows: the group of items at the relevant item j's score
    closes a threshold with precision TP_j / (below_j + ties_j), TP_j = relevant items scoring ≥ it, so
    AP = (1/R) Σ_j TP_j / (below_j + ties_j) (Manning et al. 2008, Sec. 8.4, as ``average_precision``).

    Args:
        query: int [P] query of each pair.  score: float [P] the pair's score (higher = more relevant;
            only compared for equality and order within a query).  below, ties: int [P].
        n_queries: Q.
    Returns:
        float64 [Q]; NaN for a query without pairs.
    Raises:
        ValueError: a query index outside [0, Q).
    """
    query = _by_query(query, n_queries)
    score = np.asarray(score, np.float64).reshape(-1)
    ap = np.full(n_queries, np.nan)
    if not len(query):
        return ap
    idx = np.lexsort((-score, query))                       # per query, best score first
    q, s = query[idx], score[idx]
    start = np.r_[True, q[1:] != q[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(q)), 0))
    count = np.arange(len(q)) - first + 1                   # relevant items up to this one
    end = np.r_[(q[1:] != q[:-1]) | (s[1:] != s[:-1]), True]
    run = np.cumsum(np.r_[True, end[:-1]]) - 1              # group of equal (query, score)
    tp = count[end][run]                                    # relevant items scoring ≥ this one
    prec = tp / (np.asarray(below)[idx] + np.asarray(ties)[idx])
    n_rel = np.bincount(q, minlength=n_queries)
    total = np.bincount(q, weights=prec, minlength=n_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, total / n_rel, np.nan)


def _positions(query, item, score, below, tie_lower):
    """Per pair (sorted by query, score desc., item): query, 1-based position in the strict ranking
    (ties by lower item index), and 1-based rank among the query's relevant items."""
    idx = np.lexsort((np.asarray(item, np.int64), -np.asarray(score, np.float64), query))
    q = query[idx]
    start = np.r_[True, q[1:] != q[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(q)), 0))
    hits = np.arange(len(q)) - first + 1
    pos = np.asarray(below)[idx] + np.asarray(tie_lower)[idx] + 1
    return q, pos, hits


def ap_at_k_from_ranks(query: np.ndarray, item: np.ndarray, score: np.ndarray, below: np.ndarray,
                       tie_lower: np.ndarray, k: int, n_queries: int) -> np.ndarray:
    """AP@k of each query from its relevant pairs' ranks; ties by lower item index (as ``ap_at_k``).

    Item j sits at position pos_j = below_j + tie_lower_j + 1; with hits_j relevant items at
    positions ≤ pos_j, AP@k = (1 / min(k, R)) Σ_{j: pos_j ≤ k} hits_j / pos_j (``ap_at_k_ranked``).

    Args:
        query, item: int [P].  score: float [P].  below, tie_lower: int [P].  k: ≥ 1.  n_queries: Q.
    Returns:
        float64 [Q]; NaN for a query without pairs.
    Raises:
        ValueError: k < 1 or a query index outside [0, Q).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = _by_query(query, n_queries)
    out = np.full(n_queries, np.nan)
    if not len(query):
        return out
    q, pos, hits = _positions(query, item, score, below, tie_lower)
    seen = pos <= k
    total = np.bincount(q[seen], weights=hits[seen] / pos[seen], minlength=n_queries)
    n_rel = np.bincount(q, minlength=n_queries)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, total / np.minimum(k, n_rel), np.nan)


def topk_from_ranks(query: np.ndarray, below: np.ndarray, tie_lower: np.ndarray, k: int,
                    n_queries: int) -> np.ndarray:
    """Per query: 1.0 when a relevant item is among the top k (ties by lower index, as
    ``topk_accuracy``), 0.0 when none is, NaN without pairs. float64 [Q]. Its mean over queries is
    top-k accuracy, which is Recall@K (``recall_at_k``); ``tie_lower`` must be exact where
    ``below < k``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = _by_query(query, n_queries)
    pos = np.asarray(below) + np.asarray(tie_lower) + 1
    n_rel = np.bincount(query, minlength=n_queries)
    hit = np.bincount(query[pos <= k], minlength=n_queries) > 0
    return np.where(n_rel > 0, hit.astype(np.float64), np.nan)


# ---------------------------------------------------------------- accuracy matrix R


def _square(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] < 1:
        raise ValueError(f"R must be a square [T, T] matrix (rows: after task i), got {R.shape}")
    return R


def average_accuracy(R: np.ndarray) -> float:
    """Mean score over all tasks after the last one: ACC = (1/T) Σ_j R[T−1, j].

    Lopez-Paz & Ranzato 2017, Sec. 2 (ACC); Chaudhry et al. ECCV 2018, Eq. 1 (A_T).
    """
    return float(_square(R)[-1].mean())


def forgetting(R: np.ndarray) -> float:
    """Average forgetting (Chaudhry et al., ECCV 2018, Eq. 2–3).

    f_j = max_{l ∈ 0..T−2} R[l, j] − R[T−1, j] for each task j < T−1;  F = (1/(T−1)) Σ_j f_j.
    NaN when T = 1. Higher = more forgotten.
    """
    R = _square(R)
    t = R.shape[0]
    if t < 2:
        return float("nan")
    f = R[:-1, :-1].max(axis=0) - R[-1, :-1]
    return float(f.mean())


def backward_transfer(R: np.ndarray) -> float:
    """BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1, j] − R[j, j]) (Lopez-Paz & Ranzato, NeurIPS 2017, Sec. 2).

    Negative = forgetting. NaN when T = 1.
    """
    R = _square(R)
    t = R.shape[0]
    if t < 2:
        return float("nan")
    return float((R[-1, :-1] - np.diag(R)[:-1]).mean())


def forward_transfer(R: np.ndarray, b: np.ndarray) -> float:
    """FWT = (1/(T−1)) Σ_{j ≥ 1} (R[j−1, j] − b[j]) (Lopez-Paz & Ranzato, NeurIPS 2017, Sec. 2).

    The score on a task just before it is trained, minus the untrained model's score on it.

    Args:
        R: float [T, T].  b: float [T], score of the model before any training (initial row).
    Returns:
        float; NaN when T = 1.
    Raises:
        ValueError: b is not of length T.
    """
    R = _square(R)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    t = R.shape[0]
    if b.shape != (t,):
        raise ValueError(f"b must have one entry per task ({t}), got shape {b.shape}")
    if t < 2:
        return float("nan")
    return float((np.diag(R, k=1) - b[1:]).mean())
