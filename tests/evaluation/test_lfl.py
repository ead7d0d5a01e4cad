"""Lifelong Fact Learning's metric (factmas.evaluation.lfl) against naive per-pair loops written from
their eval/GetResults_exact_metric1.py, and the generalized image→fact mode against brute force."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation import lfl
from factmas.evaluation.evaluator import Evaluator
from factmas.space import wildcard_distance

SPLIT = "random3_seed0"


def test_lfl_hits_by_hand():
    # rank of the first member (1-based): 3, 7, none, 1; group sizes 1, 3, 2, 1
    member = np.zeros((4, 10), bool)
    member[0, 2] = True
    member[1, [6, 8]] = True
    member[3, [0, 1]] = True
    size = np.array([1, 3, 2, 1])
    # pair 0: 3 <= 5; pair 1: 7 <= 5 + 3 - 1; pair 2: no member; pair 3: 1 <= 5
    np.testing.assert_array_equal(lfl.lfl_hits(member, size), [True, True, False, True])
    np.testing.assert_array_equal(lfl.lfl_hits(member, np.array([1, 2, 2, 1])), [True, False, False, True])
    # their K: a member beyond the retrieved list is not found
    np.testing.assert_array_equal(lfl.lfl_hits(member, size, max_rank=5), [True, False, False, True])
    with pytest.raises(ValueError):
        lfl.lfl_hits(member[0], size)
    with pytest.raises(ValueError):
        lfl.lfl_hits(member, size[:2])


def _naive_groups(data, f, cand):
    """G(f) among ``cand`` as their GetResults_exact_metric1.py builds it, on the fact strings."""
    o = int(data.order[f])
    if o == 1:
        return [g for g in cand if data.subject[g] == data.subject[f]]
    if o == 2:
        return [g for g in cand if (data.subject[g], data.predicate[g]) == (data.subject[f], data.predicate[f])]
    return [g for g in cand if g == f]


def test_group_keys_match_strings(rng):
    facts = [("a", "", ""), ("a", "b", ""), ("a", "b", "c"), ("a", "d", "c"), ("e", "b", ""), ("e", "", ""),
             ("a b", "", ""), ("a", "b", "x")]
    from factmas.data.dataset import tokenize_facts
    tokens, _ = tokenize_facts(facts)
    order = np.array([1 + bool(p) + bool(o) for _, p, o in facts])
    s_key, sp_key = lfl.group_keys(tokens, order)
    for i in range(len(facts)):
        for j in range(len(facts)):
            assert (s_key[i] == s_key[j]) == (facts[i][0] == facts[j][0])
            assert (sp_key[i] == sp_key[j]) == (facts[i][:2] == facts[j][:2])
    member = lfl.group_member(np.arange(len(facts)), np.arange(len(facts)), s_key, sp_key, order)
    want = np.array([[(order[f] == 1 and facts[g][0] == facts[f][0])
                      or (order[f] == 2 and facts[g][:2] == facts[f][:2]) or g == f
                      for g in range(len(facts))] for f in range(len(facts))])
    np.testing.assert_array_equal(member, want)
    cand = rng.choice(len(facts), 5, replace=False)
    np.testing.assert_array_equal(lfl.group_size(np.arange(len(facts)), cand, s_key, sp_key, order),
                                  [want[f, cand].sum() for f in range(len(facts))])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    seed = int(np.random.default_rng().integers(1000))
    print(f"tests/evaluation/test_lfl.py setup: synthetic data seed {seed}")
    path = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "s.h5", n_images=160, image_size=8,
                                  num_tasks=3, seed=seed)
    data = read_dataset(path)
    ev = Evaluator(data, SPLIT, EvalConfig(search_batch=7))     # several FAISS batches
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(len(ev.image_ids), 3, 5, generator=g)
    psi = torch.randn(data.num_facts, 3, 5, generator=g)
    psi = psi * (torch.arange(3)[None, :] < torch.as_tensor(data.order.astype(np.int64))[:, None])[..., None]
    dist = wildcard_distance(phi.double(), psi.double(),
                             torch.as_tensor(data.order.astype(np.int64))).numpy()   # [N_pool, F]
    return data, ev, phi, psi, dist


def _naive_lfl(data, ev, dist, pairs, cand):
    """Per pair, their loop: rank the candidates (stable: ties by fact id), first member of G(f) at
    1-based rank r, hit when r <= min(100, C) and r <= 5 + |G(f)| - 1."""
    cand = np.unique(cand)
    hits = []
    for i, f in pairs:
        row = int(np.searchsorted(ev.image_ids, i))
        ranked = cand[np.argsort(dist[row, cand], kind="stable")][:100]
        gt = _naive_groups(data, f, cand)
        ranks = [int(np.flatnonzero(ranked == g)[0]) + 1 for g in gt if g in ranked]
        hits.append(bool(ranks) and min(ranks) <= 5 + len(gt) - 1)
    return np.array(hits, float)


def test_lfl_standard_and_generalized_match_naive(setup):
    data, ev, phi, psi, dist = setup
    out = lfl.evaluate_lfl(ev, phi, psi)
    pairs = ev.pool_pairs
    task = data.splits[SPLIT][pairs[:, 1]]
    every = _naive_lfl(data, ev, dist, pairs, pairs[:, 1])
    for t in range(ev.num_tasks):
        sel = pairs[task == t]
        assert out["lfl_top5_standard"][t] == pytest.approx(_naive_lfl(data, ev, dist, sel, sel[:, 1]).mean())
        assert out["lfl_top5_generalized"][t] == pytest.approx(every[task == t].mean())
        assert out["lfl_counts"]["pairs"][t] == len(sel)
    assert out["lfl_top5_standard"]["all"] == out["lfl_top5_generalized"]["all"] == pytest.approx(every.mean())
    # a ranking that is not trivially all hits or all misses
    assert 0 < every.mean() < 1


def test_generalized_image_to_fact_matches_brute_force(setup):
    data, ev, phi, psi, dist = setup
    out = ev.evaluate_embeddings(phi, psi)      # the generalized mode from the evaluator's exact ranks
    pairs = ev.pool_pairs
    task_of = data.splits[SPLIT]
    # The evaluator ranks float32 distances, the brute force float64 ones: two facts whose distances
    # differ by less than float32's resolution may come in either order. Such near-ties are ranked
    # both ways (relevant facts last, then first), and the evaluator must lie between the two; with
    # no near-tie both bounds are the exact brute-force value (sklearn's AP).
    grid = 1e-5
    for key in list(range(ev.num_tasks)) + ["all"]:
        lo, hi, aps = {"top1": [], "top5": [], "ap": []}, {"top1": [], "top5": [], "ap": []}, []
        for i in np.unique(pairs[:, 0]):
            mine = pairs[pairs[:, 0] == i, 1]
            rel_facts = mine if key == "all" else mine[task_of[mine] == key]
            if not len(rel_facts):
                continue
            row = int(np.searchsorted(ev.image_ids, i))
            rel = np.isin(np.arange(data.num_facts), rel_facts)
            order = np.argsort(dist[row], kind="stable")        # tie groups: gaps below ``grid``
            coarse = np.empty(len(order), np.int64)
            coarse[order] = np.concatenate([[0], np.cumsum(np.diff(dist[row][order]) >= grid)])
            for bound, first in ((lo, ~rel), (hi, rel)):
                ranked = np.lexsort((~first, coarse))          # near-ties: ``first`` facts first
                r = rel[ranked]
                bound["top1"].append(r[:1].any())
                bound["top5"].append(r[:5].any())
                bound["ap"].append(np.mean(np.cumsum(r)[r] / (np.flatnonzero(r) + 1)))
            aps.append(average_precision_score(rel, -dist[row]))
        for name, metric in (("top1", "image_to_fact_top1_generalized"),
                             ("top5", "image_to_fact_top5_generalized"), ("ap", "image_to_fact_map_generalized")):
            got, a, b = out[metric][key], np.mean(lo[name]), np.mean(hi[name])
            assert a - 1e-9 <= got <= b + 1e-9, (metric, key, got, a, b)
            assert b - a < 0.01                                 # near-ties are rare: the bounds are tight
        if np.mean(lo["ap"]) == np.mean(hi["ap"]):
            assert out["image_to_fact_map_generalized"][key] == pytest.approx(np.mean(aps), abs=1e-6)


def test_evaluator_reports_lfl_and_all_equals_existing(setup):
    data, ev, phi, psi, _ = setup
    m = ev.evaluate_embeddings(phi, psi)
    for name in lfl.LFL_METRICS:
        assert set(m[name]) == set(range(ev.num_tasks)) | {"all"}
    # "all" of the generalized mode is the existing over-all-facts value
    for k in ("top1", "top5", "map"):
        assert m[f"image_to_fact_{k}_generalized"]["all"] == pytest.approx(m[f"image_to_fact_{k}"]["all"])
    from factmas.evaluation.recorder import Recorder
    rec = Recorder.for_evaluator(ev)
    rec.record("initial", m)
    rec.record(0, m)
    res = rec.results("r")
    assert res["metrics"]["lfl_top5_standard"]["final"] == pytest.approx(
        [m["lfl_top5_standard"][t] for t in range(ev.num_tasks)])
    # the LFL README's "Mean" column: the mean of the per-task standard values
    assert res["metrics"]["lfl_top5_standard"]["average"] == pytest.approx(
        np.mean([m["lfl_top5_standard"][t] for t in range(ev.num_tasks)]))
    assert "lfl_top5_standard" in res["baselines"]["frequency"]


def test_old_rows_without_lfl_keys_still_build(setup):
    data, ev, phi, psi, _ = setup
    m = ev.evaluate_embeddings(phi, psi)
    old = {k: v for k, v in m.items() if k not in lfl.LFL_METRICS}
    from factmas.evaluation.report import build_results
    res = build_results({0: old}, ev.num_tasks)
    assert "lfl_top5_standard" not in res["metrics"] and "fact_to_image_map" in res["metrics"]


def test_lfl_search_fallback_equals_exact_ranks(setup, monkeypatch):
    """Where G(f) groups are too large for the exact ranks, the FAISS top-100 search gives the
    same scores (both: ties by lower fact id)."""
    data, ev, phi, psi, _ = setup
    exact = lfl.evaluate_lfl(ev, phi, psi)
    assert not lfl.lfl_inputs(ev)["search"]
    monkeypatch.setattr(lfl, "MEMBERS_PER_PAIR", 0)
    monkeypatch.setattr(lfl, "MEMBER_PAIRS_SLACK", 0)
    assert lfl.lfl_inputs(ev)["search"]
    assert lfl.evaluate_lfl(ev, phi, psi) == exact
    m = ev.evaluate_embeddings(phi, psi)                   # the evaluator's fused pass, fallback too
    for name in ("lfl_top5_standard", "lfl_top5_generalized"):
        assert m[name] == exact[name]


def test_member_pairs_by_loop(rng):
    facts = [("a",), ("a", "x"), ("a", "x", "p"), ("a", "y", "p"), ("b",), ("b", "x"), ("a", "x", "q")]
    vocab = {w: i + 1 for i, w in enumerate(sorted({w for f in facts for w in f}))}
    tokens = np.zeros((len(facts), 3, 1), np.int32)
    for i, f in enumerate(facts):
        for s, w in enumerate(f):
            tokens[i, s, 0] = vocab[w]
    order = np.array([len(f) for f in facts])
    s_key, sp_key = lfl.group_keys(tokens, order)
    cand = rng.random(len(facts)) < 0.7
    cand[[0, 1]] = True
    fact = rng.integers(0, len(facts), 30)
    owner, member = lfl.member_pairs(fact, cand, s_key, sp_key, order)
    full = lfl.group_member(fact, np.arange(len(facts)), s_key, sp_key, order) & cand[None, :]
    want = np.argwhere(full)
    np.testing.assert_array_equal(np.stack([owner, member], 1), want)
    assert lfl.member_pairs(fact, cand, s_key, sp_key, order, limit=len(want) - 1) is None
