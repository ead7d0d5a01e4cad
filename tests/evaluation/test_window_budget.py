"""The column counter's memory budget (``column_ranks.WINDOW_BUDGET``, issue 28): past it the
fact → image counts come from a second pass over the same blocks against the exact own values
(``factmas.evaluation.column_exact``), and every metric stays equal bit for bit to the unbudgeted evaluation and to a brute-force reference (sklearn AP over the dense float32
−D), on crowded scores: nearly collapsed embeddings (an untrained model's) and exact ties (quantized
entries, zero images). The sharded counter's side in one process; the 2-process gloo variant is
tests/distributed/test_shard_budget.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation import column_ranks, count_kernel
from factmas.evaluation import evaluator as evaluator_mod
from factmas.evaluation.evaluator import Evaluator
from factmas.evaluation.ranking import _scale, rank_pairs
from factmas.evaluation.retrieval import prefix, unit_slots

pytestmark = pytest.mark.skipif(not count_kernel.AVAILABLE, reason="column counting needs numba")
SPLIT = "random3_seed0"
SEARCH_BATCH = 7                              # many blocks: the budget can be passed midway


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    path = make_synthetic_dataset(tmp_path_factory.mktemp("wb") / "s.h5", n_images=400, image_size=8,
                                  num_tasks=3, seed=5)
    return Evaluator(read_dataset(path), SPLIT, EvalConfig(search_batch=SEARCH_BATCH))


def _tied(rng, n: int, d: int, protos: int = 4) -> np.ndarray:
    """float32 [n, 3, d] from ``protos`` prototypes per slot with 4 entries ±1: many exact ties."""
    p = np.zeros((protos, 3, d), np.float32)
    for a in range(protos):
        for s in range(3):
            p[a, s, rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return p[rng.integers(0, protos, (n, 3)), np.arange(3)[None, :]]


def embeddings(ev: Evaluator, seed: int, kind: str, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """phi float32 [N_pool, 3, d], psi float32 [F, 3, d] (zero beyond each fact's order).
    "collapsed": one direction plus noise of 1e-6 (mean cosine ≈ 1: every image inside every
    window); "ties": a few prototypes per slot, 4 entries ±1 (unit entries ±0.5: every product and
    sum exact, in any blocking), and 10 % zero images (−D = −2)."""
    rng = np.random.default_rng(seed)
    n, f = len(ev.image_ids), ev.data.num_facts
    if kind == "collapsed":
        base = rng.standard_normal((1, 3, d)).astype(np.float32)
        phi = (base + 1e-6 * rng.standard_normal((n, 3, d))).astype(np.float32)
        psi = rng.standard_normal((f, 3, d)).astype(np.float32)
    else:
        phi, psi = _tied(rng, n, d), _tied(rng, f, d)
        phi[rng.random(n) < 0.1] = 0.0
    psi[np.arange(3)[None, :] >= ev.data.order[:, None]] = 0.0
    return phi, psi


class Spy(column_ranks.ColumnCounter):
    """ColumnCounter that records its instances (to read ``stats`` after an evaluation)."""
    made: list = []

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        Spy.made.append(self)


def evaluate(ev, phi, psi, monkeypatch, budget=None) -> tuple[dict, dict]:
    """(metrics, the column counter's stats) of one evaluation, with ``WINDOW_BUDGET`` = budget."""
    with monkeypatch.context() as m:
        if budget is not None:
            m.setattr(column_ranks, "WINDOW_BUDGET", budget)
        m.setattr(evaluator_mod, "ColumnCounter", Spy)
        Spy.made = []
        out = ev.evaluate_embeddings(torch.from_numpy(phi), torch.from_numpy(psi))
        assert len(Spy.made) == 1
        return out, Spy.made[0].stats()


def assert_equal(a: dict, b: dict) -> int:
    """Every metric equal bit for bit (NaN = NaN), timing aside; returns how many compared."""
    n = 0
    for name, v in a.items():
        if name == "timing":
            continue
        assert set(b[name]) == set(v), name
        for key, x in v.items():
            y = b[name][key]
            if isinstance(x, dict):
                assert x == y, (name, key)
            else:
                assert x == y or (math.isnan(x) and math.isnan(y)), (name, key, x, y)
            n += 1
    return n


def dense_neg(ph: np.ndarray, ps: np.ndarray, order: np.ndarray) -> np.ndarray:
    """−D float32 [N, F] of unit slots by the image → fact blocks' steps (torch product, ×2/o, −2)."""
    out = np.empty((len(ph), len(ps)), np.float32)
    for o in (1, 2, 3):
        c = order == o
        ip = torch.from_numpy(prefix(ph, o)) @ torch.from_numpy(prefix(ps[c], o)).T
        out[:, c] = ip.mul_(float(_scale(o))).sub_(2.0).numpy()
    return out


def brute_fact_to_image(ev, phi, psi) -> dict:
    """Fact → image mAP, mAP@k and Recall@K over all facts from the dense −D: sklearn's AP (ties
    as one threshold), AP@k and the first true image by a stable sort (ties by lower index)."""
    neg = dense_neg(unit_slots(torch.from_numpy(phi)), unit_slots(torch.from_numpy(psi)),
                    ev.data.order.astype(np.int64))
    rel = np.zeros(neg.shape, bool)
    rows = np.searchsorted(ev.image_ids, ev.pool_pairs[:, 0])
    rel[rows, ev.pool_pairs[:, 1]] = True
    k = ev.cfg.ap_k
    ap, apk, first = [], [], []
    for f in range(neg.shape[1]):
        r, s = rel[:, f], neg[:, f].astype(np.float64)
        if not r.any():
            continue
        ap.append(average_precision_score(r, s))
        ranked = r[np.argsort(-s, kind="stable")]
        top = ranked[:k]
        apk.append((np.cumsum(top) / np.arange(1, len(top) + 1) * top).sum() / min(k, r.sum()))
        first.append(int(np.argmax(ranked)))
    out = {"fact_to_image_map": np.mean(ap), "fact_to_image_map_at_k": np.mean(apk)}
    for kk in (1, 5, 10):
        out[f"fact_to_image_recall_at_{kk}"] = np.mean(np.array(first) < kk)
    return out


@pytest.mark.parametrize("kind", ["collapsed", "ties"])
def test_budget_fallback_equals_unbudgeted_and_brute_force(ev, monkeypatch, caplog, kind):
    """Budget 0 (stops at the first window entry) and half the entries (stops midway, after some
    were kept): every metric equal bit for bit to the unbudgeted evaluation, which kept its entries
    (the data is crowded), and, on exact products (ties), fact → image equal to the brute-force
    reference (the collapsed case's float32 near-ties depend on the blocks' products, which both
    passes share; the one-pass path is checked against brute force in test_evaluate.py)."""
    phi, psi = embeddings(ev, 11, kind)
    full, st = evaluate(ev, phi, psi, monkeypatch)
    assert not st["over_budget"] and st["window_entries"] > 1000         # crowded indeed
    for budget in (0, st["window_entries"] // 2):
        caplog.clear()
        with caplog.at_level("INFO", logger="factmas.evaluation.evaluator"):
            got, st_b = evaluate(ev, phi, psi, monkeypatch, budget)
        assert st_b["over_budget"] and st_b["window_entries"] == 0       # stopped, entries dropped
        assert "counted in a second pass" in caplog.text
        assert assert_equal(full, got) > 50
    if kind != "ties":     # near-ties: a product of other rows' blocks may round them otherwise
        return
    ref = brute_fact_to_image(ev, phi, psi)
    assert 0 < ref["fact_to_image_map"] < 1
    for name, v in ref.items():
        assert got[name]["all"] == pytest.approx(v, rel=1e-12, abs=1e-15), name


def test_spread_embeddings_stay_under_the_default_budget(ev, monkeypatch):
    """Spread (random) embeddings keep few window entries: the one-product path is used."""
    rng = np.random.default_rng(3)
    phi = rng.standard_normal((len(ev.image_ids), 3, 6)).astype(np.float32)
    psi = rng.standard_normal((ev.data.num_facts, 3, 6)).astype(np.float32)
    psi[np.arange(3)[None, :] >= ev.data.order[:, None]] = 0.0
    _, st = evaluate(ev, phi, psi, monkeypatch)
    assert not st["over_budget"] and st["window_entries"] < column_ranks.WINDOW_BUDGET


def _counter_data(rng, n=120, f=40):
    phi = np.repeat(rng.standard_normal((1, 3, 8)).astype(np.float32), n, 0)   # all images equal
    psi = rng.standard_normal((f, 3, 8)).astype(np.float32)
    order = rng.integers(1, 4, f)
    psi[np.arange(3)[None, :] >= order[:, None]] = 0.0
    rel = rng.random((n, f)) < 0.2
    return unit_slots(torch.from_numpy(phi)), unit_slots(torch.from_numpy(psi)), order, rel


def test_counter_over_budget_refuses_its_result(monkeypatch):
    """Past the budget ``result`` (and a shard's ``resolve``) raise rather than give counts that
    miss the dropped entries; under it they are given."""
    from factmas.evaluation.shard_ranks import ShardColumnCounter, local_estimates, sorted_pairs
    ph, ps, order, rel = _counter_data(np.random.default_rng(7))
    img, fact = np.nonzero(rel)
    pairs_fi = np.stack([fact, img], 1)

    def run(cls, *extra):
        cc = cls(ph, ps, order, pairs_fi, *extra)
        rank_pairs(ph, ps, np.stack([img, fact], 1), item_order=order, method="count", unit=True,
                   max_rows=16, columns=cc)
        return cc

    cc = run(column_ranks.ColumnCounter)
    assert cc.stats()["window_entries"] > 100 and not cc.over_budget
    assert len(cc.result()[0]) == len(pairs_fi)
    monkeypatch.setattr(column_ranks, "WINDOW_BUDGET", 100)
    cc = run(column_ranks.ColumnCounter)
    assert cc.over_budget and cc.stats() == {"column_blocks": cc.blocks, "window_entries": 0,
                                             "over_budget": True}
    with pytest.raises(RuntimeError, match="more than 100 window entries"):
        cc.result()
    n = len(ph)
    srt = sorted_pairs(pairs_fi, n)
    sc = run(ShardColumnCounter, 0, n, local_estimates(ph, ps, order, srt, 0),
             float(np.linalg.norm(ph, axis=2).max()))
    assert sc.over_budget
    with pytest.raises(RuntimeError, match="WINDOW_BUDGET"):
        sc.resolve(sc.partial()["neg"])


def _brute(dense, fact, image):
    """Per-pair loop: (below, ties, tie_lower) of each (fact, image) over all images."""
    out = np.zeros((len(fact), 3), np.int64)
    for k, (f, i) in enumerate(zip(fact, image)):
        col, v = dense[:, f], dense[i, f]
        out[k] = (col > v).sum(), (col == v).sum(), (col[:i] == v).sum()
    return out


@pytest.mark.parametrize("ties", [True, False])
def test_exact_second_pass_equals_brute_force_and_shards(ties, monkeypatch):
    """``ExactColumnCounter`` against a per-pair loop over the dense −D and the one-pass counts, on
    exact tied data and on spread data, blocks of 16 rows, a heavy fact (> 48 true images); on the
    tied data also ``ShardExactColumnCounter`` on 3 shares (one of 1 row), simulated in turn. Window
    entries collected 5 at a time (``COLLECT``; a cell's entries may pass it: one cell per call)."""
    monkeypatch.setattr(column_ranks, "COLLECT", 5)
    from factmas.evaluation.column_exact import ExactColumnCounter, ShardExactColumnCounter
    from factmas.evaluation.shard_ranks import sorted_pairs
    rng = np.random.default_rng(13)
    ph, ps, order, rel = _counter_data(rng)
    if ties:                                      # exact products in any blocking: brute force exact
        ph = unit_slots(torch.from_numpy(_tied(rng, len(ph), 8)))
        ps = unit_slots(torch.from_numpy(_tied(rng, len(ps), 8)))
        ps[np.arange(3)[None, :] >= order[:, None]] = 0.0
    else:                                         # spread: no tie across rows to round otherwise
        ph = unit_slots(torch.from_numpy(rng.standard_normal(ph.shape).astype(np.float32)))
    rel[:, 2] = rng.random(len(ph)) < 0.6                         # a heavy column
    img, fact = np.nonzero(rel)
    pairs_fi = np.stack([fact, img], 1)
    first = column_ranks.ColumnCounter(ph, ps, order, pairs_fi)
    rank_pairs(ph, ps, np.stack([img, fact], 1), item_order=order, method="count", unit=True,
               max_rows=16, columns=first)
    ex = ExactColumnCounter(ph, ps, order, pairs_fi, first.neg)
    rank_pairs(ph, ps, np.stack([img, fact], 1), item_order=order, method="count", unit=True,
               max_rows=16, columns=ex)
    f, i, neg, below, tie, lower = ex.result()
    ref = _brute(dense_neg(ph, ps, order), f, i)
    np.testing.assert_array_equal(np.stack([below, tie, lower], 1), ref)
    assert ex.stats()["window_entries"] == 0 and (tie > 1).any() == ties
    for a, b in zip(ex.result(), first.result()):                # = the one-pass counts
        np.testing.assert_array_equal(a, b)
    if not ties:             # shares block the rows otherwise: only exact data compares bit for bit
        return
    if not ties:             # shares block the rows otherwise: only exact data compares bit for bit
        return
    n = len(ph)
    srt = sorted_pairs(pairs_fi, n)
    parts = []
    for lo, hi in ((0, 37), (37, 38), (38, n)):
        sc = ShardExactColumnCounter(ph[lo:hi], ps, order, srt, first.neg, lo, n)
        mine = (srt[:, 1] >= lo) & (srt[:, 1] < hi)
        rank_pairs(ph[lo:hi], ps, np.stack([srt[mine, 1] - lo, srt[mine, 0]], 1), item_order=order,
                   method="count", unit=True, max_rows=16, columns=sc)
        parts.append(sc.partial())
    merged = {k: sum(p[k] for p in parts) for k in parts[0]}
    assert (merged["seen"] == 1).all()
    for a, b in zip(sc.finish(merged), ex.result()):
        np.testing.assert_array_equal(a, b)


def test_exact_second_pass_refuses_other_values():
    """Exact values that are not the blocks' own (another pass's) are refused, not counted."""
    from factmas.evaluation.column_exact import ExactColumnCounter
    ph, ps, order, rel = _counter_data(np.random.default_rng(17))
    img, fact = np.nonzero(rel)
    pairs_fi = np.stack([fact, img], 1)
    with pytest.raises(ValueError, match="exact values for"):
        ExactColumnCounter(ph, ps, order, pairs_fi, np.zeros(3, np.float32))
    ex = ExactColumnCounter(ph, ps, order, pairs_fi, np.full(len(pairs_fi), 0.5, np.float32))
    with pytest.raises(RuntimeError, match="outside its rounding window"):
        rank_pairs(ph, ps, np.stack([img, fact], 1), item_order=order, method="count", unit=True,
                   max_rows=16, columns=ex)
