"""Retrieval evaluation of a model on the test images, per task and over all facts.

What is measured (``Evaluator.evaluate``; metric names are the keys of the returned dict):

* ``fact_to_image_map`` (the headline, the accuracy matrix R of the tables): for each fact, the test
  images of the pool ranked by wildcard distance (full ranking, exact: computed from the ranks of the
  true images in blocked score matrices, ``factmas.evaluation.ranking``), AP with sklearn's tie
  handling (``factmas.evaluation.metrics.average_precision``); mean over the facts of a task, and over all facts.
* ``fact_to_image_map_at_k``: the same with AP@k, k = ``EvalConfig.ap_k`` (100):
  (1/min(k, R)) Σ_{i≤k} P(i)·rel(i).
* ``image_to_fact_top1`` / ``image_to_fact_top5``: for each image, the facts ranked by distance; a hit
  when any of the image's true facts is in the top 1 / 5. ``image_to_fact_map``: AP of that ranking.
  Per task t, the candidates are the facts of task t and the queries the pool images that carry at
  least one of them (Lifelong Fact Learning's *standard* mode); for "all", every fact and every image
  with a fact.
* ``fact_to_image_recall_at_{1,5,10}`` / ``image_to_fact_recall_at_{1,5,10}`` (``RECALL_METRICS``):
  Recall@K of each direction (``factmas.evaluation.metrics.recall_at_k``: the fraction of queries —
  facts with a true image, resp. images with a true fact — whose first true item is in the top K),
  per task (the same queries and candidates as the direction's other metrics) and over all facts;
  from the same exact ranks, ties by lower index. Image → fact R@1 / R@5 equal top-1 / top-5.
* ``lfl_top5_standard`` / ``lfl_top5_generalized`` (Lifelong Fact Learning's headline metric in its
  two modes) and ``image_to_fact_{top1,top5,map}_generalized`` (task t's images ranking every fact):
  ``factmas.evaluation.lfl``, with ``"lfl_counts"`` (test pairs per task).

Image pool (``EvalConfig.image_pool``) of the fact → image search: ``"all"`` (default, used in the
tables): every image of the evaluated image split (test), so a fact competes against all test images;
``"task"``: for task t only the images that carry a fact of task t. A fact (or image) with no true
image (fact) in its pool has no AP and is left out of the means; the counts are in the result.

Result of ``Evaluator.evaluate``: ``{metric: {task index (int) or "all": float}}``
for each metric recorded in ``factmas.evaluation.metric_specs.METRIC_SPECS`` (exactly those), plus
``"counts": {"facts": {t: n}, "images": {t: n}}`` (facts and query images with an AP),
``"lfl_counts"``, ``"timing": {"embed_s", "search_s", "metrics_s"}`` (seconds) and ``"embedding"``.

The evaluator measures; recording the rows of R and writing the report is
``factmas.evaluation.recorder.Recorder``'s::

    ev = Evaluator(data, split, cfg.eval, device)     # once per run
    metrics = ev.evaluate(model)                       # before task 0, then after each task
    rec = Recorder.for_evaluator(ev)                   # keeps the rows, writes results files
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from factmas.config import EvalConfig
from factmas.data.dataset import SPLIT_NAMES, FactData
from factmas.data.experience import Experience, experiences
from factmas.evaluation import count_kernel, shard_eval
from factmas.evaluation import metrics as M
from factmas.evaluation import column_ranks
from factmas.evaluation.column_exact import ExactColumnCounter
from factmas.evaluation.column_ranks import ColumnCounter
from factmas.evaluation.image_to_fact import (ImageToFact, image_to_fact_means,  # noqa: F401 (re-exported)
                                              image_to_fact_rows)
from factmas.evaluation.lfl import LFL_MAX_RANK, lfl_from_ranks, lfl_inputs, lfl_means
from factmas.evaluation.lfl_stream import stream_for
from factmas.evaluation.metrics import HEADLINE, METRICS, RECALL_KS, RECALL_METRICS  # noqa: F401 (re-exported)
from factmas.evaluation.metric_specs import METRIC_SPECS
from factmas.evaluation.ranking import rank_pairs
from factmas.evaluation.retrieval import unit_slots
from factmas.model.embedder import RunEmbedder
from factmas.progress import progress_bar
from factmas.space.distance import EPS

log = logging.getLogger(__name__)

IMAGE_POOLS = ("all", "task")
UNIT_ROWS = 4096        # rows normalized at a time into the float64 unit slots (no float64 copy of φ)


def unit_slots64(phi: torch.Tensor) -> torch.Tensor:
    """float64 [N, 3, d]: each slot of ``phi`` float [N, 3, d] L2-normalized in float64
    (``torch.nn.functional.normalize`` of ``phi.double()``), ``UNIT_ROWS`` rows at a time into one
    buffer: the same values (each row's norm is its own reduction) without a float64 copy of φ."""
    phi = torch.as_tensor(phi)
    u = torch.empty(phi.shape, dtype=torch.float64)
    for a in range(0, phi.shape[0], UNIT_ROWS):
        torch.nn.functional.normalize(phi[a:a + UNIT_ROWS].double(), dim=-1, out=u[a:a + UNIT_ROWS])
    return u


def inplace_ok(z) -> bool:
    """True where ``unit_slots_inplace`` applies to ``z``: a contiguous CPU float32 torch tensor
    [N, 3, d] without autograd."""
    return (isinstance(z, torch.Tensor) and z.device.type == "cpu" and z.dtype == torch.float32
            and z.ndim == 3 and z.shape[1] == 3 and z.is_contiguous() and not z.requires_grad)


def unit_slots_inplace(z: torch.Tensor) -> np.ndarray:
    """``retrieval.unit_slots(z)`` computed in ``z``'s own memory (``inplace_ok``): each slot divided
    by its L2 norm (at least ``factmas.space.distance.EPS``), the same float32 operations as
    ``normalize_slots``; returns the float32 numpy view [N, 3, d] of ``z``, which is overwritten."""
    z.div_(z.norm(dim=-1, keepdim=True).clamp_min(EPS))
    return z.numpy()


def mean_pairwise_cosine(phi: torch.Tensor) -> float:
    """Mean over slots s and image pairs i ≠ j of cos(φ_is, φ_js) — 1.0 for a collapsed embedding,
    about 0 for directions spread evenly. phi float [N, 3, d] raw (each slot L2-normalized here,
    ``unit_slots64``); Σ_{i≠j} φ̂_i·φ̂_j = ‖Σ_i φ̂_i‖² − N per slot. NaN for N < 2."""
    n = phi.shape[0]
    if n < 2:
        return float("nan")
    u = unit_slots64(phi)                                                # [N, 3, d]
    total = u.sum(0).square().sum(-1) - n                                # [3]
    return float((total / (n * (n - 1))).mean())


class Evaluator:
    """Evaluates models on one dataset and task split (the measuring; ``Recorder`` records).

    Args:
        data: the dataset (images in memory).  split: task split name.  cfg: ``EvalConfig``.
        device: where the model runs.
        inputs: image input source (``factmas.model.features.image_inputs``, e.g. the feature cache);
            None: the dataset's pixels (through a pretrained model's stem, live). The images and
            facts are embedded by ``factmas.model.embedder.RunEmbedder`` with ``cfg.flip_average``
            and ``cfg.embed_batch``.
        progress: show the embedding's progress (``factmas.progress``; rank 0 only).
        tasks: the experience of each task of ``split`` (``factmas.data.experience``; built here
            when None): each task's images of the evaluated image split, the relevance index.
    Raises:
        DatasetError: unknown split.  ValueError: unknown image pool / image split, or no images in
        the evaluated image split.
    """

    def __init__(self, data: FactData, split: str, cfg: EvalConfig | None = None,
                 device: torch.device | str = "cpu", inputs=None,
                 tasks: list[Experience] | None = None, progress: bool = False) -> None:
        self.data, self.split, self.cfg = data, split, cfg or EvalConfig()
        self.progress = progress
        self.inputs = inputs
        self.device = torch.device(device)
        if self.cfg.image_pool not in IMAGE_POOLS:
            raise ValueError(f"eval.image_pool: {self.cfg.image_pool!r}; valid: {list(IMAGE_POOLS)}")
        if self.cfg.image_split not in SPLIT_NAMES:
            raise ValueError(f"eval.image_split: {self.cfg.image_split!r}; valid: {list(SPLIT_NAMES)}")
        self.task_of_fact = data.task_of_facts(split).astype(np.int64)
        tasks = experiences(data, split) if tasks is None else tasks
        self.num_tasks = len(tasks)
        self.image_ids = np.flatnonzero(data.image_split == SPLIT_NAMES.index(self.cfg.image_split))
        if not len(self.image_ids):
            raise ValueError(f"{data.path or 'dataset'}: no images in split {self.cfg.image_split!r}")
        in_pool = np.isin(data.pairs[:, 0], self.image_ids)
        self.relevant = tasks[0].relevance if tasks else None   # the queried images are all in the pool
        self.pool_pairs = pool_pairs = data.pairs[in_pool]
        self.n_true_images = np.bincount(pool_pairs[:, 1], minlength=data.num_facts)
        # per task: the pool images that carry a fact of the task
        self.task_images = [e.images[self.cfg.image_split] for e in tasks]

    # ---- measuring --------------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict:
        """All metrics of ``model`` (module docstring layout). The model is put in eval mode.

        On several processes (``factmas.distributed``) each rank embeds its share of the images and
        of the facts; ψ is gathered; each rank scores its own images against every fact and the
        counts are merged exactly (``evaluate_sharded``, ``factmas.evaluation.shard_eval``), or, where
        that does not apply (``shard_eval.can_shard``), φ is gathered and rank 0 runs the search.
        Rank 0 computes the metrics and every rank returns rank 0's result."""
        from factmas.distributed import broadcast, gather_rows, is_main, shard_bounds, size
        model.eval()
        cfg, data = self.cfg, self.data
        t0 = time.perf_counter()
        bar = progress_bar(total=len(self.image_ids) if size() == 1 else None, unit="img", leave=False,
                           desc=f"evaluation: embedding the {cfg.image_split} images",
                           enabled=self.progress and is_main())
        embed = RunEmbedder.from_eval(model, cfg, data, inputs=self.inputs, device=self.device,
                                      cache=False)
        psi_of = lambda ids: embed.facts(data.tokens[ids], data.order[ids])  # noqa: E731
        if size() > 1 and shard_eval.can_shard(self):
            lo, hi = shard_bounds(len(self.image_ids))
            with bar:
                phi_local = embed.images(self.image_ids[lo:hi], bar.update)
            psi = gather_rows(psi_of, np.arange(data.num_facts))
            return broadcast(self.evaluate_sharded(phi_local, psi, lo, time.perf_counter() - t0,
                                                   own_phi=True))
        with bar:
            phi = gather_rows(lambda ids: embed.images(ids, bar.update), self.image_ids)
        psi = gather_rows(psi_of, np.arange(data.num_facts))
        result = (self.evaluate_embeddings(phi, psi, time.perf_counter() - t0, own_phi=True)
                  if is_main() else None)
        return broadcast(result)

    def evaluate_sharded(self, phi_local: torch.Tensor, psi: torch.Tensor, lo: int,
                         embed_s: float = 0.0, label: str = "evaluation",
                         own_phi: bool = False) -> dict | None:
        """``evaluate_embeddings``' result from this rank's share of the pool images (a collective:
        every rank of the process group calls it with its own share, in rank order of
        ``factmas.distributed.shard_bounds``): ``phi_local`` float [n, 3, d] raw φ of pool rows
        lo .. lo + n − 1 (``self.image_ids[lo:lo + n]``), ``psi`` float [F, 3, d] raw ψ of every fact.
        Each rank scores its images against all facts (``factmas.evaluation.shard_eval``); the
        metrics equal the one-process ones on the same embeddings (the mean cosine up to float64
        rounding). Returns the result on rank 0, None on the others. Where the shares cannot be
        counted (LFL's top-100 search), φ is gathered and rank 0 evaluates it whole. ``own_phi``:
        as ``evaluate_embeddings``' (``phi_local`` overwritten with its unit slots where the shares
        are counted)."""
        from factmas.distributed import all_reduce_array, gather_rows, is_main, shard_bounds
        want = shard_bounds(len(self.image_ids))
        if (lo, lo + len(phi_local)) != want:
            raise ValueError(f"evaluate_sharded: pool rows {lo} .. {lo + len(phi_local)} given, this "
                             f"rank's share is {want[0]} .. {want[1]} (factmas.distributed.shard_bounds)")
        timing = {"embed_s": embed_s, "search_s": 0.0, "metrics_s": 0.0}
        order = self.data.order.astype(np.int64)
        t0 = time.perf_counter()
        local_sums = shard_eval.slot_sums(phi_local)      # (before the ranks: its buffer is freed)
        if own_phi and inplace_ok(phi_local) and shard_eval.countable(lfl_inputs(self, members=False)):
            hats = unit_slots_inplace(phi_local), unit_slots(psi)      # φ held once
        else:
            hats = unit_slots(phi_local), unit_slots(psi)
        shared = shard_eval.sharded_ranks(self, hats[0], hats[1], lo, order)
        if shared is None:                           # gathered, as without sharding
            phi = gather_rows(lambda ids: phi_local, self.image_ids)
            return self.evaluate_embeddings(phi, psi, embed_s, label) if is_main() else None
        sums = all_reduce_array(local_sums, "sum")
        timing["search_s"] += time.perf_counter() - t0
        if not is_main():
            return None
        cosine = shard_eval.mean_cosine_from_sums(sums, len(self.image_ids))
        return self._metrics(None, None, hats, order, timing, shared, cosine, label)

    def evaluate_embeddings(self, phi: torch.Tensor, psi: torch.Tensor, embed_s: float = 0.0,
                            label: str = "evaluation", own_phi: bool = False) -> dict:
        """All metrics of given embeddings: ``phi`` float [N_pool, 3, d] raw φ of the pool images
        (``self.image_ids`` in order), ``psi`` float [F, 3, d] raw ψ of every fact (e.g. a baseline's,
        ``factmas.evaluation.baselines``). Adds ``"embedding": {"mean_cosine": c}`` (``mean_pairwise_cosine``).
        ``own_phi``: ``phi`` may be overwritten with its unit slots (``unit_slots_inplace``, the same
        values as ``retrieval.unit_slots``) once the mean cosine is taken, so that φ is held once —
        where it is a CPU float32 tensor and LFL's metric needs no search of the raw embeddings."""
        data = self.data
        timing = {"embed_s": embed_s, "search_s": 0.0, "metrics_s": 0.0}
        order = data.order.astype(np.int64)
        cosine = mean_pairwise_cosine(phi)                # (before the ranks: its buffer is freed)
        t0 = time.perf_counter()
        if own_phi and inplace_ok(phi) and not lfl_inputs(self, members=False)["search"]:
            hats = unit_slots_inplace(phi), unit_slots(psi)
            phi = None                                    # (now its unit slots)
        else:
            hats = unit_slots(phi), unit_slots(psi)       # unit slots, once for both directions
        timing["search_s"] += time.perf_counter() - t0
        shared = self._shared_ranks(hats, order, timing)  # both directions from one product
        return self._metrics(phi, psi, hats, order, timing, shared, cosine, label)

    def _metrics(self, phi, psi, hats, order, timing, shared, cosine: float, label: str) -> dict:
        """``evaluate_embeddings``' result from the unit slots ``hats`` and, where given, ``shared``
        ranks of both directions (``_shared_ranks``, or a sharded evaluation's with ``phi``, ``psi``
        None and ``hats[0]`` only a share); ``cosine`` the embedding's mean pairwise cosine."""
        data = self.data
        ap, ap_k, f2i_hits = self._fact_to_image(hats, order, timing, shared)
        groups = {t: np.flatnonzero(self.task_of_fact == t) for t in range(self.num_tasks)}
        groups["all"] = np.arange(data.num_facts)
        # one {group: value} per recorded metric computed here (LFL's come from factmas.evaluation.lfl);
        # a name without a record fails here, and tests/evaluation/test_metric_specs.py checks both ways
        out: dict[str, Any] = {m: {} for m, spec in METRIC_SPECS.items() if spec.kind != "lfl"}
        counts: dict[str, dict] = {"facts": {}, "images": {}}
        i2f_all, lfl = self._image_to_fact(phi, psi, hats, order, groups, timing, shared)
        for key, facts in groups.items():
            t1 = time.perf_counter()
            f2i = fact_to_image_scores(ap[facts], ap_k[facts], {k: h[facts] for k, h in f2i_hits.items()})
            counts["facts"][key] = int((~np.isnan(ap[facts])).sum())
            timing["metrics_s"] += time.perf_counter() - t1
            counts["images"][key] = i2f_all[key].n_images
            for name, value in {**f2i, **i2f_all[key].metrics()}.items():
                out[name][key] = value
        out.update(lfl)                               # LFL's metric, standard/generalized modes
        out["counts"], out["timing"] = counts, timing
        out["embedding"] = {"mean_cosine": cosine}
        log.info("%s: %s over all facts %.4f (embed %.2f s, search %.2f s, metrics %.2f s)",
                 label, HEADLINE, out[HEADLINE]["all"], timing["embed_s"], timing["search_s"],
                 timing["metrics_s"])
        return out

    def _shared_ranks(self, hats, order, timing) -> dict | None:
        """Both directions' ranks from one pass of image → fact score blocks, the fact → image
        counts taken from their columns (``factmas.evaluation.column_ranks``): with the image pool
        "all", on the CPU, where numba is installed; else None (each direction computes its own
        products). {"i2f": ``PairRanks`` of the true pairs as ``_image_to_fact`` computes them,
        "f2i": the tuple of ``ColumnCounter.result``, "lfl_in": ``lfl_inputs(self, members=False)``,
        "lfl_hits": LFL's (standard, generalized) hit of every test pair, from the same blocks
        (``factmas.evaluation.lfl_stream``), or None where LFL needs its top-100 search}."""
        if (self.cfg.image_pool != "all" or self.device.type != "cpu" or not count_kernel.AVAILABLE
                or not len(self.image_ids)):
            return None
        t0 = time.perf_counter()
        lfl_in = lfl_inputs(self, members=False)
        pairs = np.unique(self.pool_pairs, axis=0)
        rows = np.searchsorted(self.image_ids, lfl_in["queries"])         # query images' rows
        img = np.searchsorted(self.image_ids, pairs[:, 0])
        cols = ColumnCounter(hats[0], hats[1], order, np.stack([pairs[:, 1], img], axis=1))
        # LFL's member ranks block by block, only each test pair's first member kept (lfl_stream)
        stream = None if lfl_in["search"] else stream_for(self, lfl_in, rows[lfl_in["row"]])
        # the second pass (below) computes the same blocks (the same parts and rows) without the
        # image → fact pairs, which the first pass has counted
        run = lambda c, i2f, lfl: rank_pairs(  # noqa: E731
            hats[0], hats[1], i2f, unit=True, capped_stream=lfl, item_order=order,
            item_segment=lfl_in["segment"], k_exact=max(5, max(RECALL_KS), LFL_MAX_RANK),
            max_rows=self.cfg.search_batch, device=self.device, method="count", columns=c)
        r = run(cols, np.stack([img, pairs[:, 1]], axis=1), stream)
        r.query = np.searchsorted(rows, r.query)          # every pool row → its query position
        log.debug("ranks of both directions from one product: %s, %s", r.blocks, cols.stats())
        if cols.over_budget:         # crowded windows: a second pass against the exact own values
            log.info("fact → image: more than %d window entries (crowded scores), counted in a "
                     "second pass", column_ranks.WINDOW_BUDGET)
            if not cols.seen.all():
                raise RuntimeError("column counting: true pairs never counted")
            cols = ExactColumnCounter(hats[0], hats[1], order, np.stack([pairs[:, 1], img], axis=1),
                                      cols.neg)
            run(cols, np.zeros((0, 2), np.int64), None)
        shared = {"i2f": r, "f2i": cols.result(), "lfl_in": lfl_in,
                  "lfl_hits": None if stream is None else stream.hits()}
        timing["search_s"] += time.perf_counter() - t0
        return shared

    def _fact_to_image(self, hats, order, timing, shared=None) -> tuple[np.ndarray, np.ndarray, dict]:
        """AP and AP@k of every fact over its image pool: two float64 [F] (NaN: no true image), and
        {K: float64 [F]} for K in ``RECALL_KS``: 1.0 where a true image is in the fact's top K, 0.0
        where none is, NaN without a true image (Recall@K's per-query hits).

        From the ranks of each fact's true images (``factmas.evaluation.ranking.rank_pairs``), not
        from sorted rankings; equal to ``M.average_precision`` / ``M.ap_at_k`` on the full rows.
        ``hats``: the unit slots (``retrieval.unit_slots``) of the pool images and of every fact."""
        phi_hat, psi_hat = hats
        f = self.data.num_facts
        ap, ap_k = np.full(f, np.nan), np.full(f, np.nan)
        hits = {k: np.full(f, np.nan) for k in RECALL_KS}
        pools = ([(np.arange(f), self.image_ids)] if self.cfg.image_pool == "all" else
                 [(np.flatnonzero(self.task_of_fact == t), self.task_images[t])
                  for t in range(self.num_tasks)])
        if shared is not None:                       # image pool "all": counted with image → fact
            t1 = time.perf_counter()
            q, item, neg, below, ties, lower = shared["f2i"]
            ap[:] = M.ap_from_ranks(q, neg, below, ties, f)
            ap_k[:] = M.ap_at_k_from_ranks(q, item, neg, below, lower, self.cfg.ap_k, f)
            for k in RECALL_KS:
                hits[k][:] = M.topk_from_ranks(q, below, lower, k, f)
            timing["metrics_s"] += time.perf_counter() - t1
            return ap, ap_k, hits
        for facts, images in pools:
            if not len(facts) or not len(images):
                continue
            t0 = time.perf_counter()
            rows = np.searchsorted(self.image_ids, images)             # positions in phi
            pairs = self.pool_pairs[np.isin(self.pool_pairs[:, 1], facts)
                                    & np.isin(self.pool_pairs[:, 0], images)]
            local = np.stack([np.searchsorted(facts, pairs[:, 1]),
                              np.searchsorted(images, pairs[:, 0])], axis=1)
            r = rank_pairs(psi_hat[facts], phi_hat[rows], local, query_order=order[facts], unit=True,
                           k_exact=max(self.cfg.ap_k, max(RECALL_KS)), max_rows=self.cfg.search_batch,
                           device=self.device)
            t1 = time.perf_counter()
            timing["search_s"] += t1 - t0
            ap[facts] = M.ap_from_ranks(r.query, r.neg_dist, r.below, r.ties, len(facts))
            ap_k[facts] = M.ap_at_k_from_ranks(r.query, r.item, r.neg_dist, r.below, r.tie_lower,
                                               self.cfg.ap_k, len(facts))
            for k in RECALL_KS:
                hits[k][facts] = M.topk_from_ranks(r.query, r.below, r.tie_lower, k, len(facts))
            timing["metrics_s"] += time.perf_counter() - t1
        return ap, ap_k, hits

    def n_pool(self, facts: np.ndarray, images: np.ndarray) -> np.ndarray:
        """int [len(facts)]: true images of each fact within ``images``."""
        if len(images) == len(self.image_ids):
            return self.n_true_images[facts]
        return self.relevant(images[None, :], facts[:, None]).sum(axis=1)

    def _image_to_fact(self, phi, psi, hats, order, groups, timing, shared=None) -> tuple[dict, dict]:
        """({group: ``ImageToFact``}, LFL's metrics) of the pool images ranking the facts of
        each group (a task: its facts; "all": every fact), from the ranks of each image's true facts
        (``factmas.evaluation.ranking.rank_pairs``, one pass for all groups and for LFL's metric:
        the ranks of the members of LFL's ground truths come from the same score blocks,
        ``factmas.evaluation.lfl.lfl_from_ranks``). The generalized mode (Lifelong Fact Learning;
        ``factmas.evaluation.lfl``): the same images and true facts of the group, ranked among *all*
        facts (the ``*_all`` counts). A sharded evaluation's ``shared`` brings the per-image scores
        and LFL's per-pair hits, merged from every rank (``factmas.evaluation.shard_eval``)."""
        if shared is not None and "i2f_rows" in shared:
            t1 = time.perf_counter()
            out = image_to_fact_means(shared["i2f_rows"])
            lfl = lfl_means(self, shared["lfl_in"], *shared["lfl_hits"])
            timing["metrics_s"] += time.perf_counter() - t1
            return out, lfl
        if shared is not None and shared.get("lfl_hits") is not None:    # (one process)
            t1 = time.perf_counter()
            out = image_to_fact_means(image_to_fact_rows(shared["i2f"], self.task_of_fact, groups,
                                                         len(shared["lfl_in"]["queries"])))
            lfl = lfl_means(self, shared["lfl_in"], *shared["lfl_hits"])
            timing["metrics_s"] += time.perf_counter() - t1
            return out, lfl
        t0 = time.perf_counter()
        lfl_in = lfl_inputs(self) if shared is None else shared["lfl_in"]
        queries = lfl_in["queries"]                                     # image ids with a fact
        if shared is None:
            pairs = np.unique(self.pool_pairs, axis=0)
            local = np.stack([np.searchsorted(queries, pairs[:, 0]), pairs[:, 1]], axis=1)
            rows = np.searchsorted(self.image_ids, queries)
            # LFL's members only matter within the top 100: their counts may stop there (capped_pairs)
            r = rank_pairs(hats[0][rows], hats[1], local, capped_pairs=lfl_in["rank_pairs"], unit=True,
                           item_order=order, item_segment=lfl_in["segment"],
                           k_exact=max(5, max(RECALL_KS), LFL_MAX_RANK), max_rows=self.cfg.search_batch, device=self.device)
        else:
            r = shared["i2f"]
        t1 = time.perf_counter()
        timing["search_s"] += t1 - t0
        out = image_to_fact_means(image_to_fact_rows(r, self.task_of_fact, groups, len(queries)))
        lfl = lfl_from_ranks(self, lfl_in, r, phi, psi)
        timing["metrics_s"] += time.perf_counter() - t1
        return out, lfl


def fact_to_image_scores(ap: np.ndarray, ap_k: np.ndarray, hits: dict[int, np.ndarray]) -> dict[str, float]:
    """The fact→image metrics of one group of facts, {metric name: value}: mAP and mAP@k (means of
    float64 [F] AP and AP@k, NaN for a fact without a true image, left out) and Recall@K for each K
    of ``hits`` ({K: float64 [F]} 1.0 / 0.0 per fact, NaN without a true image; the mean over the
    facts with one, NaN when none has)."""
    out = {"fact_to_image_map": M.mean_ap(ap), "fact_to_image_map_at_k": M.mean_ap(ap_k)}
    for k, h in hits.items():
        out[f"fact_to_image_recall_at_{k}"] = float(np.nanmean(h)) if (~np.isnan(h)).any() else float("nan")
    return out
