"""Lifelong Fact Learning's image→fact metric and its two evaluation modes, standard and generalized.

Source: Elhoseiny et al., *Exploring the Challenges towards Lifelong Fact Learning*, ACCV 2018, code
github.com/Elhoseiny-VisionCAIR-Lab/lifelong_fact_learning (commit d23bc45), files
``eval/GetResults_exact_metric1.py`` (the metric), ``eval/extract_results_mds_random.py`` (standard
mode, the numbers of their README) and ``eval/extract_results_mds_random_generalized.py`` (generalized).

**The metric** (``KnowledgeDetRatios_K5`` with ``flag_nodup=True``, as every one of their scripts
calls it). A query is one test (image, fact) pair — their rows are pairs, an image with three facts is
three rows with the same image embedding. The candidate facts are the distinct facts of the evaluated
test pairs, ranked by distance to the image (their ``get_exact_cos``: top K = min(100, #facts)). The
ground truth G(f) of the pair's fact f depends on f's order (their ``Is_FirstOrder`` etc. and the
``FirstOrderGroups``/``SecondOrderGroups``/``ThirdOrderGroups`` lines):

* ⟨S⟩:      every candidate with the same subject (⟨S⟩, ⟨S,P⟩, ⟨S,P,O⟩ alike);
* ⟨S,P⟩:    every candidate with the same subject and predicate (⟨S,P⟩ and ⟨S,P,O⟩);
* ⟨S,P,O⟩:  f itself.

The pair is a hit when the best-ranked member of G(f) has 1-based rank r ≤ 5 + |G(f)| − 1 (their
``ismemberAll_ind[j_gt] - offset + 1 <= 5 + len(gt_tuple_inds) - 1`` with offset 0 at the first
member met) and r ≤ K = min(100, #candidates) (beyond their top-100 list a member is not found).
The score of a task is the mean of the hits over its pairs (``KnowledgeMeanDetRatio_K5``), and their
README's "Mean" column is the plain mean of the task scores (57.74 = mean(72.77, 40.31, 33.87, 84.02)).

Modes (their README, "Evaluation"):

* **standard** (``extract_results_mds_*.py``): task t's pairs ranked among the facts of task t's test
  pairs only; G(f) within those candidates.
* **generalized** (``*_generalized.py``): the pairs of all tasks at once, every fact of every task's
  test pairs a candidate, G(f) over all of them; the score of task t is the mean over its pairs.

What differs from their code, and the choices where it is ambiguous:

* Distance: they rank by cosine distance of the whole embedding vector; here by this model's own
  wildcard distance (``factmas.evaluation.retrieval``), the distance every other factmas metric uses.
* Ties: their ``sklearn.neighbors.NearestNeighbors(algorithm="brute")`` orders equal distances
  arbitrarily; here ties are broken by lower fact id (as a ``FactIndex`` ranking), and the naive
  references of the tests use a stable sort (the same rule).
* Ranks: from the exact counts of ``factmas.evaluation.ranking.rank_pairs`` (``lfl_from_ranks``):
  each member of G(f) gets its position among the candidates; no top-100 search.
* Facts: they deduplicate facts by embedding (``np.unique(T_embedding, axis=0)``); factmas facts are
  distinct rows already, so candidates are fact ids (two facts with equal embeddings stay two).
* Candidates: exactly as theirs, only facts with at least one pair in the evaluated image pool (a
  fact without a test image is not ranked), per task (standard) or over all tasks (generalized).
* ``flag_nodup=False`` (ground truth = all the image's facts, an image-level ratio) is never run by
  their scripts (and fails in Python: ``all_im_ind[mask]`` indexes a list); not implemented.

The image-level metrics (top-1, top-5, mAP) in the **generalized** mode per task — query images
carrying a fact of task t rank *all* facts, and only the image's true facts of task t count as
relevant — are named here (``GENERALIZED_I2F``) but computed by the evaluator from the same exact
ranks as the standard ones (``factmas.evaluation.ranking``: no second search, no sorted rows). The
evaluator's ``image_to_fact_*`` per task are the standard mode (task t's facts only), and their "all"
is both modes at once (every fact a candidate and relevant).

May import: numpy, torch, ``factmas.evaluation.ranking``, ``factmas.evaluation.retrieval``,
``factmas.evaluation.metric_specs``.
"""
from __future__ import annotations

import numpy as np

# the keys of LFL's metric and of the generalized image→fact metrics in the evaluator's rows (each
# {task: value, "all": value}; their records: factmas.evaluation.metric_specs)
from factmas.evaluation.metric_specs import GENERALIZED_I2F, LFL_METRICS  # noqa: F401

LFL_TOP = 5           # "top 5 + |G| - 1" (KnowledgeDetRatios_K5)
LFL_MAX_RANK = 100    # their K: the retrieved list is the top 100 facts
# the exact ranks serve LFL when the (pair, member of G(f)) pairs number at most this many per pair
# (plus MEMBER_PAIRS_SLACK); beyond (huge ⟨S⟩ groups), a FAISS top-100 search per mode does
MEMBERS_PER_PAIR, MEMBER_PAIRS_SLACK = 32, 1 << 20


def group_keys(tokens: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer keys of each fact's subject and of its (subject, predicate): two int64 [F].

    tokens int [F, 3, L] word ids of the S, P, O slots (0-padded); order int [F] in 1..3. Facts with
    equal S tokens share ``s_key``; with equal S and P tokens (an absent P is all zeros) ``sp_key``.
    """
    tok = np.asarray(tokens).reshape(len(tokens), 3, -1)
    _, s_key = np.unique(tok[:, 0, :], axis=0, return_inverse=True)
    _, sp_key = np.unique(tok[:, :2, :].reshape(len(tok), -1), axis=0, return_inverse=True)
    return s_key.reshape(-1).astype(np.int64), sp_key.reshape(-1).astype(np.int64)


def group_member(fact: np.ndarray, cand: np.ndarray, s_key: np.ndarray, sp_key: np.ndarray,
                 order: np.ndarray) -> np.ndarray:
    """bool [Q, k]: candidate ``cand[q, j]`` (a fact id) is in the LFL ground truth G(``fact[q]``).

    G(f) (module docstring): same subject for ⟨S⟩, same subject and predicate for ⟨S,P⟩, f itself
    for ⟨S,P,O⟩. fact int [Q]; cand int [Q, k] or [k] (shared by all queries); keys/order int [F].
    """
    f = np.asarray(fact, np.int64)[:, None]
    c = np.asarray(cand, np.int64)
    c = np.broadcast_to(c, (len(f), c.shape[-1])) if c.ndim == 1 else c
    o = np.asarray(order, np.int64)[f]
    return ((c == f) | ((o == 1) & (s_key[c] == s_key[f]))
            | ((o == 2) & (sp_key[c] == sp_key[f])))


def group_size(fact: np.ndarray, candidates: np.ndarray, s_key: np.ndarray, sp_key: np.ndarray,
               order: np.ndarray) -> np.ndarray:
    """int64 [Q]: |G(fact[q])| among ``candidates`` int [C] (distinct fact ids); a fact that is not
    among the candidates counts only the members that are."""
    fact = np.asarray(fact, np.int64)
    cand = np.unique(np.asarray(candidates, np.int64))
    o = np.asarray(order, np.int64)[fact]
    same = np.isin(fact, cand).astype(np.int64)
    s_count = np.bincount(s_key[cand], minlength=len(s_key))
    sp_count = np.bincount(sp_key[cand], minlength=len(sp_key))
    return np.where(o == 1, s_count[s_key[fact]], np.where(o == 2, sp_count[sp_key[fact]], same))


def lfl_hits(member_ranked: np.ndarray, size: np.ndarray, top: int = LFL_TOP,
             max_rank: int = LFL_MAX_RANK) -> np.ndarray:
    """bool [Q]: LFL hit of each query pair (their ``sum_isMember5`` with ``flag_nodup=True``).

    Args:
        member_ranked: bool [Q, k], column j true when the candidate at 0-based rank j is in G(f)
            (the candidates of each row sorted by ascending distance, best first).
        size: int [Q] |G(f)| among the candidates.  top: the 5 of "top 5".  max_rank: their K = 100.
    Returns:
        hit when the first member's 1-based rank r satisfies r ≤ top + size − 1 and r ≤ max_rank.
    Raises:
        ValueError: member_ranked not 2-D, or size of another length.
    """
    m = np.asarray(member_ranked, bool)
    size = np.asarray(size, np.int64)
    if m.ndim != 2 or len(size) != len(m):
        raise ValueError(f"member_ranked must be [Q, k] and size [Q], got {m.shape} and {size.shape}")
    m = m[:, :max_rank]
    found = m.any(axis=1)
    rank = np.argmax(m, axis=1) + 1
    return found & (rank <= top + size - 1)


def mean_or_nan(x: np.ndarray) -> float:
    """Mean of a non-empty array, NaN when empty."""
    return float(np.mean(x)) if len(x) else float("nan")


def task_means(values: np.ndarray, task: np.ndarray, num_tasks: int) -> dict:
    """{t: mean of ``values`` over the queries of task t (NaN when none), "all": mean over all}."""
    out = {t: mean_or_nan(values[task == t]) for t in range(num_tasks)}
    out["all"] = mean_or_nan(values)
    return out


def _pool_rows(ev, image_ids: np.ndarray) -> np.ndarray:
    """Rows of ``phi`` (positions in ``ev.image_ids``, sorted) of dataset image ids."""
    return np.searchsorted(ev.image_ids, image_ids)


def lfl_pair_hits(ev, phi, psi, pairs: np.ndarray, candidates: np.ndarray, s_key: np.ndarray,
                  sp_key: np.ndarray) -> np.ndarray:
    """bool [P]: LFL hit of each (image, fact) pair of ``pairs`` int [P, 2] (dataset ids), the images
    ranking ``candidates`` int [C] (fact ids) by wildcard distance (FAISS, top min(100, C)).

    ``ev`` is a ``factmas.evaluation.evaluator.Evaluator`` (its image pool, data and search batch);
    phi float [N_pool, 3, d] and psi float [F, 3, d] raw embeddings (``Evaluator.evaluate_embeddings``).
    """
    from factmas.evaluation.retrieval import FactIndex
    if not len(pairs) or not len(candidates):
        return np.zeros(len(pairs), bool)
    order = np.asarray(ev.data.order, np.int64)
    cand = np.unique(np.asarray(candidates, np.int64))
    size = group_size(pairs[:, 1], cand, s_key, sp_key, order)
    images, pair_img = np.unique(pairs[:, 0], return_inverse=True)
    rows = _pool_rows(ev, images)
    index = FactIndex(psi[cand], order[cand])
    hits = np.zeros(len(pairs), bool)
    by_image = np.argsort(pair_img, kind="stable")
    bounds = np.searchsorted(pair_img[by_image], np.arange(len(images) + 1))
    for start, _, loc in index.search_batches(phi[rows], LFL_MAX_RANK, ev.cfg.search_batch):
        ranked = cand[loc]                                               # [b, k] fact ids
        sel = by_image[bounds[start]:bounds[start + len(loc)]]           # pairs of these images
        member = group_member(pairs[sel, 1], ranked[pair_img[sel] - start], s_key, sp_key, order)
        hits[sel] = lfl_hits(member, size[sel])
    return hits


def member_pairs(fact: np.ndarray, candidate: np.ndarray, s_key: np.ndarray, sp_key: np.ndarray,
                 order: np.ndarray, limit: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Every (query pair, member) of the LFL ground truths: (owner int64 [E], member int64 [E]),
    ``member[e]`` a fact of G(``fact[owner[e]]``) among the candidates (module docstring), sorted
    by owner then member.

    Args:
        fact: int [Q] the fact of each query pair.  candidate: bool [F] the candidate facts.
        s_key, sp_key: int [F] (``group_keys``).  order: int [F] in 1..3.
        limit: return None instead when there would be more than this many (None: no limit).
    """
    fact = np.asarray(fact, np.int64)
    order = np.asarray(order, np.int64)
    cand = np.flatnonzero(candidate)
    spo = (order[fact] == 3) & np.asarray(candidate, bool)[fact]          # G(f) = {f}
    owners, members = [np.flatnonzero(spo)], [fact[spo]]
    ranges = []
    for o, key in ((1, s_key), (2, sp_key)):
        q = np.flatnonzero(order[fact] == o)
        by_key = cand[np.argsort(key[cand], kind="stable")]          # candidates grouped by key
        k_sorted = key[by_key]
        lo = np.searchsorted(k_sorted, key[fact[q]], "left")
        ranges.append((q, by_key, lo, np.searchsorted(k_sorted, key[fact[q]], "right") - lo))
    if limit is not None and len(owners[0]) + sum(int(n.sum()) for *_, n in ranges) > limit:
        return None
    for q, by_key, lo, n in ranges:
        owners.append(np.repeat(q, n))
        run = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)     # 0..n−1 within each query
        members.append(by_key[np.repeat(lo, n) + run])
    owner, member = np.concatenate(owners), np.concatenate(members)
    idx = np.lexsort((member, owner))
    return owner[idx], member[idx]


def member_count(fact: np.ndarray, candidate: np.ndarray, s_key: np.ndarray, sp_key: np.ndarray,
                 order: np.ndarray) -> int:
    """The number of (query pair, member) pairs ``member_pairs`` would list, without listing them."""
    fact = np.asarray(fact, np.int64)
    o = np.asarray(order, np.int64)[fact]
    candidate = np.asarray(candidate, bool)
    cand = np.flatnonzero(candidate)
    total = int(((o == 3) & candidate[fact]).sum())
    for k, key in ((1, s_key), (2, sp_key)):
        key = np.asarray(key, np.int64)
        per_key = np.bincount(key[cand], minlength=int(key.max(initial=-1)) + 1)
        total += int(per_key[key[fact[o == k]]].sum())
    return total


def lfl_segments(task_of_fact: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """int64 [F]: the segment of each fact for ``factmas.evaluation.ranking.rank_pairs`` that serves
    the evaluator's image → fact metrics and LFL's at once: 2·task + (1 if a candidate)."""
    return 2 * np.asarray(task_of_fact, np.int64) + np.asarray(candidate, bool)


def lfl_inputs(ev, members: bool = True) -> dict:
    """What LFL needs of the evaluator ``ev`` (``factmas.evaluation.evaluator.Evaluator``): the pool's
    pairs int [P, 2] (dataset ids), their task [P], the query images (dataset ids, sorted), each
    pair's query row, the candidate facts (bool [F]: a fact of a pool pair), the segments of
    ``lfl_segments`` and the (query row, member fact) pairs int [E, 2] whose ranks LFL reads
    (``owner``, ``member``, ``rank_pairs``). ``members=False``: those three are None (not listed:
    ``factmas.evaluation.lfl_stream`` gives them block by block); ``search`` is decided alike."""
    s_key, sp_key = group_keys(ev.data.tokens, ev.data.order)
    pairs = np.asarray(ev.pool_pairs, np.int64).reshape(-1, 2)
    f = ev.data.num_facts
    candidate = np.zeros(f, bool)
    candidate[pairs[:, 1]] = True
    queries = np.unique(pairs[:, 0])
    row = np.searchsorted(queries, pairs[:, 0])
    limit = MEMBERS_PER_PAIR * len(pairs) + MEMBER_PAIRS_SLACK
    common = {"s_key": s_key, "sp_key": sp_key, "pairs": pairs, "task": ev.task_of_fact[pairs[:, 1]],
              "queries": queries, "row": row, "candidate": candidate,
              "segment": lfl_segments(ev.task_of_fact, candidate)}
    if not members:
        search = member_count(pairs[:, 1], candidate, s_key, sp_key, ev.data.order) > limit
        return {"search": search, **common, "owner": None, "member": None, "rank_pairs": None}
    got = member_pairs(pairs[:, 1], candidate, s_key, sp_key, ev.data.order, limit=limit)
    search = got is None                         # too many members: ``lfl_from_ranks`` searches
    owner, member = (np.zeros(0, np.int64),) * 2 if search else got
    return {"search": search, **common, "owner": owner, "member": member,
            "rank_pairs": np.stack([row[owner], member], 1)}


def lfl_from_ranks(ev, inputs: dict, r, phi=None, psi=None) -> dict:
    """``evaluate_lfl``'s result from exact ranks ``r`` (``factmas.evaluation.ranking.PairRanks`` of
    the query images ``inputs["queries"]`` ranking every fact, segments ``inputs["segment"]``,
    holding at least the pairs ``inputs["rank_pairs"]``, ``tie_lower`` exact below rank 100).

    A member c of G(f) is at 1-based position below + tie_lower + 1 among the mode's candidates
    (ties by lower fact id, as FAISS's ranking); the pair's first member is the member of least
    position; standard mode: the members and candidates of f's task (c's own segment
    (task, candidate)); generalized: all candidates (the sum over the candidate segments).
    Where ``lfl_inputs`` found too many members (``inputs["search"]``), the hits come from a FAISS
    top-100 search of the raw embeddings phi [N_pool, 3, d] and psi [F, 3, d] instead
    (``lfl_pair_hits``, per task and once over all)."""
    pairs = inputs["pairs"]
    T = ev.num_tasks
    pair_task = inputs["task"]
    counts = {t: int((pair_task == t).sum()) for t in range(T)}
    counts["all"] = len(pairs)
    if inputs["search"]:
        if phi is None or psi is None:
            raise ValueError("LFL's groups are too large for the exact ranks: give phi and psi")
        standard = {}
        for t in range(T):
            sel = pairs[pair_task == t]
            standard[t] = mean_or_nan(lfl_pair_hits(ev, phi, psi, sel, sel[:, 1], inputs["s_key"],
                                                    inputs["sp_key"]))
        hits = lfl_pair_hits(ev, phi, psi, pairs, pairs[:, 1], inputs["s_key"], inputs["sp_key"])
        general = task_means(hits.astype(np.float64), pair_task, T)
        standard["all"] = general["all"]
        return {"lfl_top5_standard": standard, "lfl_top5_generalized": general,
                "lfl_counts": {"pairs": counts}}
    hit_std, hit_gen = lfl_hits_from_ranks(ev, inputs, r)
    return lfl_means(ev, inputs, hit_std, hit_gen)


def lfl_hits_from_ranks(ev, inputs: dict, r) -> tuple[np.ndarray, np.ndarray]:
    """bool [P] × 2: LFL's hit of each pair of ``inputs["pairs"]`` in the standard and generalized
    modes, from the exact ranks ``r`` (``lfl_from_ranks``, without the search fallback). A pair's hit
    needs only its own image's ranks (the sharded evaluation computes them where the image lives)."""
    pairs, owner, member = inputs["pairs"], inputs["owner"], inputs["member"]
    F = ev.data.num_facts
    key = r.query * F + r.item
    at = np.searchsorted(key, inputs["rank_pairs"][:, 0] * F + inputs["rank_pairs"][:, 1])
    if len(at) and not (key[np.minimum(at, len(key) - 1)] == inputs["rank_pairs"][:, 0] * F
                        + inputs["rank_pairs"][:, 1]).all():
        raise ValueError("the ranks lack pairs that LFL needs (inputs['rank_pairs'])")
    cand_cols = np.flatnonzero(r.segments % 2 == 1)
    pos_std = r.below[at] + r.tie_lower[at] + 1
    pos_gen = (r.below_seg[at][:, cand_cols].sum(1, dtype=np.int64)
               + r.tie_lower_seg[at][:, cand_cols].sum(1, dtype=np.int64) + 1)
    same_task = ev.task_of_fact[member] == inputs["task"][owner]
    n = len(pairs)
    big = np.iinfo(np.int64).max
    first_std = np.full(n, big)
    np.minimum.at(first_std, owner[same_task], pos_std[same_task])
    first_gen = np.full(n, big)
    np.minimum.at(first_gen, owner, pos_gen)
    size_std = np.bincount(owner[same_task], minlength=n)
    size_gen = np.bincount(owner, minlength=n)
    hit_std = (first_std <= LFL_MAX_RANK) & (first_std <= LFL_TOP + size_std - 1)
    hit_gen = (first_gen <= LFL_MAX_RANK) & (first_gen <= LFL_TOP + size_gen - 1)
    return hit_std, hit_gen


def lfl_means(ev, inputs: dict, hit_std: np.ndarray, hit_gen: np.ndarray) -> dict:
    """``lfl_from_ranks``' result from the hits of every pair of ``inputs["pairs"]`` (bool [P] each,
    ``lfl_hits_from_ranks``): per task and over all pairs, both modes, and the pair counts."""
    T = ev.num_tasks
    pair_task = inputs["task"]
    counts = {t: int((pair_task == t).sum()) for t in range(T)}
    counts["all"] = len(inputs["pairs"])
    standard = {t: mean_or_nan(hit_std[pair_task == t].astype(np.float64)) for t in range(T)}
    general = task_means(hit_gen.astype(np.float64), pair_task, T)
    standard["all"] = general["all"]
    return {"lfl_top5_standard": standard, "lfl_top5_generalized": general,
            "lfl_counts": {"pairs": counts}}


def evaluate_lfl(ev, phi, psi) -> dict:
    """Every key of ``LFL_METRICS``' LFL scores ({task: value, "all": value}) plus ``"lfl_counts":
    {"pairs": {t: n, "all": n}}`` for the evaluator ``ev`` and raw embeddings phi float [N_pool, 3,
    d] (the pool images in ``ev.image_ids`` order) and psi float [F, 3, d].

    ``lfl_top5_standard[t]``: task t's test pairs, candidates the facts of those pairs;
    ``lfl_top5_generalized[t]``: task t's pairs, candidates the facts of every task's pairs; "all" of
    both: every pair, every candidate (the generalized score of all pairs). Their README's "Mean" is
    the mean of the per-task standard values (results.json: ``metrics[...]["average"]``).

    From exact ranks (``factmas.evaluation.ranking.rank_pairs``: no sorted rows, no top-k search);
    the evaluator gets the same from the ranks it computes for image → fact (``lfl_from_ranks``).
    """
    import torch
    from factmas.evaluation.ranking import rank_pairs
    inputs = lfl_inputs(ev)
    rows = torch.as_tensor(np.searchsorted(ev.image_ids, inputs["queries"]))
    r = rank_pairs(phi[rows], psi, np.zeros((0, 2), np.int64), capped_pairs=inputs["rank_pairs"],
                   item_order=ev.data.order,
                   item_segment=inputs["segment"], k_exact=LFL_MAX_RANK,
                   max_rows=ev.cfg.search_batch, device=ev.device)
    return lfl_from_ranks(ev, inputs, r, phi, psi)
