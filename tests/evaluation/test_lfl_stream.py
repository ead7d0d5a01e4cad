"""LFL's member ranks block by block (factmas.evaluation.lfl_stream, issue 28: evaluation memory flat in
N) against today's capped pairs (every member pair listed and counted to the end), on seeded data with
exact ties and crowded scores, with tiny blocks; φ held once and the chunked float64 unit slots against
the whole-array formulas, bit for bit; the refusals."""
import numpy as np
import pytest
import torch

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation import count_kernel, evaluator, lfl, lfl_stream, shard_eval
from factmas.evaluation.column_ranks import ColumnCounter
from factmas.evaluation.evaluator import Evaluator
from factmas.evaluation.ranking import rank_pairs
from factmas.evaluation.retrieval import unit_slots

SPLIT = "random3_seed0"
K = 100
METHODS = ["count", "sort"] if count_kernel.AVAILABLE else ["sort"]


def _crowded(n, order, g, d=2):
    """float32 [n, 3, d] small integer vectors (many equal rows: exact ties, crowded scores); facts'
    absent slots zero when ``order`` is given."""
    z = torch.randint(-1, 2, (n, 3, d), generator=g).float()
    z[:, :, 0] += 0.5                                          # no zero slot
    if order is not None:
        z = z * (torch.arange(3)[None, :] < torch.as_tensor(order)[:, None])[..., None]
    return z


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    seed = 11
    path = make_synthetic_dataset(tmp_path_factory.mktemp("d") / "s.h5", n_images=240, image_size=8,
                                  num_tasks=3, seed=seed)
    data = read_dataset(path)
    ev = Evaluator(data, SPLIT, EvalConfig(search_batch=5))
    g = torch.Generator().manual_seed(seed)
    phi = _crowded(len(ev.image_ids), None, g)
    psi = _crowded(data.num_facts, data.order.astype(np.int64), g)
    return data, ev, phi, psi


def _old_and_new(ev, phi, psi, method, max_rows, columns=False):
    """(PairRanks with today's capped pairs, LFL hits from them) and (PairRanks with the stream, its
    hits), the image → fact pass as the evaluator runs it (every pool row a query)."""
    order = ev.data.order.astype(np.int64)
    hats = unit_slots(phi), unit_slots(psi)
    old_in, new_in = lfl.lfl_inputs(ev), lfl.lfl_inputs(ev, members=False)
    assert not old_in["search"] and not new_in["search"] and new_in["rank_pairs"] is None
    rows = np.searchsorted(ev.image_ids, old_in["queries"])
    pairs = np.unique(ev.pool_pairs, axis=0)
    img = np.searchsorted(ev.image_ids, pairs[:, 0])
    true = np.stack([img, pairs[:, 1]], axis=1)
    kw = dict(unit=True, item_order=order, item_segment=old_in["segment"], k_exact=K,
              max_rows=max_rows, method=method, block_elements=64)
    col = (lambda: ColumnCounter(hats[0], hats[1], order, np.stack([pairs[:, 1], img], 1))) if columns else (lambda: None)
    capped = old_in["rank_pairs"]
    r_old = rank_pairs(hats[0], hats[1], true, capped_pairs=np.stack([rows[capped[:, 0]], capped[:, 1]], 1),
                       columns=col(), **kw)
    r_old.query = np.searchsorted(rows, r_old.query)
    old_hits = lfl.lfl_hits_from_ranks(ev, old_in, r_old)
    stream = lfl_stream.stream_for(ev, new_in, rows[new_in["row"]])
    calls = []
    orig = stream.pairs
    stream.pairs = lambda qb: calls.append(len(qb)) or orig(qb)
    r_new = rank_pairs(hats[0], hats[1], true, capped_stream=stream, columns=col(), **kw)
    r_new.query = np.searchsorted(rows, r_new.query)
    return r_old, old_hits, r_new, stream.hits(), calls


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("max_rows", [1, 3, None])
def test_stream_equals_capped_pairs(setup, method, max_rows):
    data, ev, phi, psi = setup
    r_old, old_hits, r_new, new_hits, calls = _old_and_new(ev, phi, psi, method, max_rows)
    # LFL's hits: equal in both modes, and not trivially all hits or all misses
    for a, b in zip(old_hits, new_hits):
        np.testing.assert_array_equal(a, b)
        assert 0 < a.mean() < 1
    # the true pairs' counts: equal field by field (the stream's pairs are not kept)
    keep = ~r_old.capped
    assert not r_new.capped.any() and keep.sum() == len(r_new.query) and (~keep).sum() > 0
    for name in ("query", "item", "neg_dist", "segment", "below", "ties", "tie_lower", "below_all",
                 "ties_all", "tie_lower_all", "below_seg", "ties_seg", "tie_lower_seg"):
        np.testing.assert_array_equal(getattr(r_old, name)[keep], getattr(r_new, name), err_msg=name)
    assert (r_new.ties > 1).any()                        # exact ties were there to count
    # one call per block of rows, never more rows than a block holds
    assert len(calls) > 1 and max(calls) <= (max_rows or len(ev.image_ids))


@pytest.mark.skipif(not count_kernel.AVAILABLE, reason="column counting needs numba")
def test_stream_with_column_counting(setup):
    data, ev, phi, psi = setup
    r_old, old_hits, r_new, new_hits, _ = _old_and_new(ev, phi, psi, "count", 4, columns=True)
    for a, b in zip(old_hits, new_hits):
        np.testing.assert_array_equal(a, b)
    for name in ("below", "ties", "tie_lower", "below_seg", "tie_lower_seg"):
        np.testing.assert_array_equal(getattr(r_old, name)[~r_old.capped], getattr(r_new, name))


def test_evaluator_lfl_equals_todays_path(setup):
    """The evaluator's LFL scores (the stream, where numba is installed) equal ``evaluate_lfl``'s
    (today's capped pairs), and the whole result does not depend on φ being overwritten."""
    data, ev, phi, psi = setup
    want = lfl.evaluate_lfl(ev, phi, psi)
    got = ev.evaluate_embeddings(phi, psi)
    for name in ("lfl_top5_standard", "lfl_top5_generalized", "lfl_counts"):
        assert got[name] == want[name]
    mine = phi.clone()
    owned = ev.evaluate_embeddings(mine, psi, own_phi=True)
    for d in (got, owned):
        d.pop("timing")
    assert owned == got
    np.testing.assert_array_equal(mine.numpy(), unit_slots(phi))      # φ overwritten: its unit slots


def test_members_and_count_equal_member_pairs(rng):
    F = 60
    order = rng.integers(1, 4, F)
    s_key = rng.integers(0, 5, F)
    sp_key = s_key * 10 + rng.integers(0, 3, F)
    cand = rng.random(F) < 0.6
    fact = rng.integers(0, F, 80)
    owner, member = lfl.member_pairs(fact, cand, s_key, sp_key, order)
    st = lfl_stream.MemberStream(fact, np.zeros(80), np.arange(80), cand, s_key, sp_key, order, np.zeros(F))
    o2, m2 = st.members(np.arange(80))
    got = np.stack([o2, m2], 1)
    got = got[np.lexsort((got[:, 1], got[:, 0]))]
    np.testing.assert_array_equal(got, np.stack([owner, member], 1))
    assert st.total() == len(owner) == lfl.member_count(fact, cand, s_key, sp_key, order)


def test_refusals(setup):
    data, ev, phi, psi = setup
    order = ev.data.order.astype(np.int64)
    hats = unit_slots(phi), unit_slots(psi)
    new_in = lfl.lfl_inputs(ev, members=False)
    rows = np.searchsorted(ev.image_ids, new_in["queries"])
    none = np.zeros((0, 2), np.int64)
    mk = lambda r=None: lfl_stream.stream_for(ev, new_in, rows[new_in["row"]] if r is None else r)  # noqa: E731
    kw = dict(unit=True, item_order=order, item_segment=new_in["segment"], k_exact=K, max_rows=4)
    with pytest.raises(ValueError, match="capped_stream"):
        rank_pairs(hats[0], hats[1], none, capped_stream=mk(), capped_pairs=none, **kw)
    with pytest.raises(ValueError, match="capped_stream"):
        rank_pairs(hats[1], hats[0], none, query_order=order, capped_stream=mk(), unit=True)
    with pytest.raises(ValueError, match="out of range"):
        rank_pairs(hats[0], hats[1], none, capped_stream=mk(np.full(len(new_in["pairs"]), len(phi))), **kw)
    bad = mk()
    orig = bad.pairs
    bad.pairs = lambda qb: orig(qb) + np.array([1, 0])       # pairs of another row
    with pytest.raises(ValueError, match="another block|out of range"):
        rank_pairs(hats[0], hats[1], none, capped_stream=bad, **kw)
    st = mk()
    with pytest.raises(RuntimeError, match="never counted"):
        st.hits()
    qb = np.arange(3)
    got = st.pairs(qb)
    assert len(got)
    with pytest.raises(ValueError, match="lack pairs"):
        st.take(np.zeros(0, np.int64), ev.data.num_facts, *(np.zeros(0, np.int64),) * 2,
                *(np.zeros((0, 8), np.int32),) * 2, np.arange(8))
    st.pairs(np.arange(3, 5))
    st._pending = None
    st.done[:] = True
    with pytest.raises(RuntimeError, match="two blocks"):
        st.pairs(qb)


def test_unit_slots_inplace_and_chunked_float64_bit_for_bit(monkeypatch):
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(37, 3, 16, generator=g) * torch.rand(37, 3, 1, generator=g)
    phi[4, 1] = 0.0                                           # a zero slot (the EPS clamp)
    want = unit_slots(phi)
    z = phi.clone()
    assert evaluator.inplace_ok(z) and not evaluator.inplace_ok(z.double())
    assert not evaluator.inplace_ok(z.transpose(0, 1)) and not evaluator.inplace_ok(z.requires_grad_())
    z = phi.clone()
    got = evaluator.unit_slots_inplace(z)
    np.testing.assert_array_equal(got, want)
    assert np.shares_memory(got, z.numpy())

    def whole_cosine(p):                                      # the formula before the chunks
        u = torch.nn.functional.normalize(p.double(), dim=-1)
        n = p.shape[0]
        return float(((u.sum(0).square().sum(-1) - n) / (n * (n - 1))).mean())

    whole_sums = torch.nn.functional.normalize(phi.double(), dim=-1).sum(0).numpy()
    for rows in (1, 5, 4096):
        monkeypatch.setattr(evaluator, "UNIT_ROWS", rows)
        monkeypatch.setattr(shard_eval, "UNIT_ROWS", rows)
        assert evaluator.mean_pairwise_cosine(phi) == whole_cosine(phi)
        np.testing.assert_array_equal(shard_eval.slot_sums(phi), whole_sums)
