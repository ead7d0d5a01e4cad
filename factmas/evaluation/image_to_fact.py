"""Image → fact scores from the ranks of each image's true facts: per image (``image_to_fact_rows``),
then their means (``image_to_fact_means``, ``ImageToFact``). An image's scores need only its own
pairs' counts, so a sharded evaluation computes them where the image lives and rank 0 takes the
means of the concatenated arrays (``factmas.evaluation.shard_eval``), the one-process numbers.

May import: numpy, ``factmas.evaluation.metrics``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from factmas.evaluation import metrics as M
from factmas.evaluation.metrics import RECALL_KS


def image_to_fact_rows(r, task_of_fact: np.ndarray, groups: dict, nq: int) -> dict:
    """Per group of facts (a task's, or "all") and per query image, the image → fact scores that
    ``image_to_fact_means`` averages: {group: (n query images, None where n = 0, else a list of
    float64 [nq] arrays: top-1, top-5, AP within the group; top-1, top-5, AP among all facts
    (generalized); Recall@K for K in ``RECALL_KS``; NaN for an image without a true fact in the
    group)}. ``r``: ``PairRanks`` of the nq query images ranking every fact (``query`` the query
    position), segments 2·task + candidate. An image's values need only its own pairs' counts."""
    true = ~r.capped                         # the true pairs (LFL's members only: capped)
    # counts within the item's task: the sum over its two segments (2·task + candidate)
    below, ties, lower = (np.zeros(len(r.query), np.int64) for _ in range(3))
    seg_task = r.segments // 2
    item_task = task_of_fact[r.item]
    for t in np.unique(seg_task):
        mine, cols = item_task == t, np.flatnonzero(seg_task == t)
        for acc, per_seg in ((below, r.below_seg), (ties, r.ties_seg), (lower, r.tie_lower_seg)):
            acc[mine] = per_seg[mine][:, cols].sum(1, dtype=np.int64)
    out = {}
    for key in groups:
        if key == "all":
            sel = true.copy()
            b_k, ti_k, lo_k = r.below_all, r.ties_all, r.tie_lower_all
        else:
            sel = true & (item_task == key)      # the facts of task ``key`` (groups[key])
            b_k, ti_k, lo_k = below, ties, lower
        q = r.query[sel]
        n = len(np.unique(q))
        if not n:
            out[key] = (0, None)
            continue
        arrays = []
        for b, ti, lo in ((b_k[sel], ti_k[sel], lo_k[sel]),
                          (r.below_all[sel], r.ties_all[sel], r.tie_lower_all[sel])):
            arrays += [M.topk_from_ranks(q, b, lo, 1, nq), M.topk_from_ranks(q, b, lo, 5, nq),
                       M.ap_from_ranks(q, r.neg_dist[sel], b, ti, nq)]
        arrays += [M.topk_from_ranks(q, b_k[sel], lo_k[sel], k, nq) for k in RECALL_KS]
        out[key] = (n, arrays)
    return out


def image_to_fact_means(rows: dict) -> dict:
    """{group: ``ImageToFact``} from ``image_to_fact_rows``' per-image arrays (means over the
    images with a true fact in the group; NaN scores and 0 images where none has)."""
    out = {}
    for key, (n, a) in rows.items():
        if not n:
            out[key] = ImageToFact.empty()
            continue
        own = (float(np.nanmean(a[0])), float(np.nanmean(a[1])), M.mean_ap(a[2]))
        general = (float(np.nanmean(a[3])), float(np.nanmean(a[4])), M.mean_ap(a[5]))
        out[key] = ImageToFact(*own, n, *general, tuple(float(np.nanmean(x)) for x in a[6:]))
    return out


class ImageToFact(NamedTuple):
    """The image→fact scores of one group of facts (a task's, or "all"), fractions (NaN: no query
    image): the pool images with a true fact in the group rank the group's facts (top-1, top-5 hit
    rates, mAP; Recall@K for K in ``RECALL_KS``) and, generalized (Lifelong Fact Learning), every
    fact; ``n_images`` the query images."""
    top1: float
    top5: float
    map: float
    n_images: int
    top1_generalized: float
    top5_generalized: float
    map_generalized: float
    recall: tuple[float, ...]

    @classmethod
    def empty(cls) -> "ImageToFact":
        """A group without query images: NaN scores, 0 images."""
        nan = float("nan")
        return cls(nan, nan, nan, 0, nan, nan, nan, (nan,) * len(RECALL_KS))

    def metrics(self) -> dict[str, float]:
        """{metric name (``factmas.evaluation.metric_specs``): value}."""
        return {"image_to_fact_top1": self.top1, "image_to_fact_top5": self.top5,
                "image_to_fact_map": self.map, "image_to_fact_top1_generalized": self.top1_generalized,
                "image_to_fact_top5_generalized": self.top5_generalized,
                "image_to_fact_map_generalized": self.map_generalized,
                **{f"image_to_fact_recall_at_{k}": v for k, v in zip(RECALL_KS, self.recall)}}
