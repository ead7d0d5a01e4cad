"""The rank-based exact evaluation (factmas.evaluation.ranking + metrics.*_from_ranks) against the old
path: FAISS full rankings (retrieval.FactIndex / ImageIndex) scored by average_precision / ap_at_k /
top-k of the sorted lists, on seeded random data with many exact ties and on continuous data."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from factmas.evaluation import count_kernel
from factmas.evaluation import metrics as M
from factmas.evaluation.ranking import rank_pairs
from factmas.evaluation.retrieval import FactIndex, ImageIndex


def _tied_vectors(rng, n, d=8, protos=4):
    """float32 [n, 3, d]: slots drawn from a few prototypes with 4 entries ±1 (unit slots ±0.5, so
    every inner product is exact in float32 and equal vectors give exactly equal distances)."""
    p = np.zeros((protos, 3, d), np.float32)
    for a in range(protos):
        for s in range(3):
            p[a, s, rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    scale = rng.choice([1.0, 3.0], (n, 1, 1)).astype(np.float32)          # raw norms differ
    return p[rng.integers(0, protos, (n, 3)), np.arange(3)[None, :]] * scale


def _data(rng, ties: bool, n=60, f=45):
    if ties:
        phi, psi = _tied_vectors(rng, n), _tied_vectors(rng, f)
    else:
        phi = rng.standard_normal((n, 3, 8)).astype(np.float32)
        psi = rng.standard_normal((f, 3, 8)).astype(np.float32)
    order = rng.integers(1, 4, f)
    order[:3] = [1, 2, 3]
    psi[np.arange(3)[None, :] >= order[:, None]] = 0.0
    rel = rng.random((n, f)) < 0.15
    return phi, psi, order, rel


def _old_fact_to_image(phi, psi, order, rel, k):
    """Old path: ImageIndex full ranking (k = N) per fact, AP of the ranked list; the dense distance
    matrix [F, N] it gives, for ap_at_k with the documented tie rule (lower image index first)."""
    n, f = rel.shape
    d, i = ImageIndex(phi, gpu=False).search(psi, order, n)
    ap = M.average_precision(-d, rel.T[np.arange(f)[:, None], i])
    dense = np.empty((f, n), np.float32)
    dense[np.arange(f)[:, None], i] = d
    return ap, M.ap_at_k(-dense, rel.T, k), dense


@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("block", [1 << 22, 50])
def test_fact_to_image_equals_old_path(rng, ties, block):
    phi, psi, order, rel = _data(rng, ties)
    ap_old, apk_old, dense = _old_fact_to_image(phi, psi, order, rel, 10)
    if ties:
        assert sum(len(np.unique(r)) < len(r) for r in dense) > 30        # the data has ties
    r = rank_pairs(psi, phi, np.argwhere(rel.T), query_order=order, k_exact=10, block_elements=block)
    ap = M.ap_from_ranks(r.query, r.neg_dist, r.below, r.ties, len(psi))
    apk = M.ap_at_k_from_ranks(r.query, r.item, r.neg_dist, r.below, r.tie_lower, 10, len(psi))
    np.testing.assert_array_equal(np.isnan(ap), np.isnan(ap_old))
    np.testing.assert_allclose(ap, ap_old, rtol=1e-12, atol=0)
    np.testing.assert_allclose(apk, apk_old, rtol=1e-12, atol=0)
    if ties:                                    # exact arithmetic: the very FAISS distances
        np.testing.assert_array_equal(-r.neg_dist, dense[r.query, r.item])
    else:                                       # torch's and FAISS's float32 products: last bits
        np.testing.assert_allclose(-r.neg_dist, dense[r.query, r.item], rtol=0, atol=2e-6)
    for q in np.flatnonzero(rel.T.any(1))[:10]:                            # and sklearn's AP
        assert ap[q] == pytest.approx(average_precision_score(rel.T[q], -dense[q]), rel=1e-12)


@pytest.mark.parametrize("ties", [True, False])
def test_image_to_fact_per_segment_and_all_equals_old_path(rng, ties):
    phi, psi, order, rel = _data(rng, ties)
    task = rng.integers(0, 3, len(psi))
    r = rank_pairs(phi, psi, np.argwhere(rel), item_order=order, item_segment=task, k_exact=5,
                   block_elements=200)
    n = len(phi)
    for t in (0, 1, 2, "all"):
        facts = np.arange(len(psi)) if t == "all" else np.flatnonzero(task == t)
        q = np.flatnonzero(rel[:, facts].any(1))
        d, loc = FactIndex(psi[facts], order[facts], gpu=False).search(phi[q], len(facts))
        ranked = rel[q][:, facts][np.arange(len(q))[:, None], loc]
        if t == "all":
            sel, b, ti, lo = np.ones(len(r.query), bool), r.below_all, r.ties_all, r.tie_lower_all
        else:
            sel, b, ti, lo = r.segment == t, r.below, r.ties, r.tie_lower
        ap = M.ap_from_ranks(r.query[sel], r.neg_dist[sel], b[sel], ti[sel], n)
        np.testing.assert_allclose(ap[q], M.average_precision(-d, ranked), rtol=1e-12, atol=0)
        assert np.isnan(np.delete(ap, q)).all()
        for k in (1, 5):
            top = M.topk_from_ranks(r.query[sel], b[sel], lo[sel], k, n)
            np.testing.assert_array_equal(top[q], ranked[:, :k].any(1).astype(float))


def test_threads_blocks_and_ties_inside_top_k(rng):
    """Two threads (rows sorted in a pool), one-row blocks, all items tied: positions by lower index."""
    phi = np.ones((30, 3, 4), np.float32)
    psi = np.ones((9, 3, 4), np.float32)
    order = np.array([1, 2, 3] * 3)
    rel = rng.random((30, 9)) < 0.3
    rel[0] = False
    rel[0, 8] = True
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = rank_pairs(psi, phi, np.argwhere(rel.T), query_order=order, block_elements=1)
    finally:
        torch.set_num_threads(threads)
    apk = M.ap_at_k_from_ranks(r.query, r.item, r.neg_dist, r.below, r.tie_lower, 7, 9)
    dense = np.zeros((9, 30))
    np.testing.assert_allclose(apk, M.ap_at_k(dense, rel.T, 7), rtol=1e-12)
    np.testing.assert_array_equal(r.below, 0)
    np.testing.assert_array_equal(r.ties, 30)


def test_from_ranks_on_hand_made_counts():
    # one query, relevant items at distinct positions 1 and 3 of 4, then a tie group of 2 at 1-2
    assert M.ap_from_ranks([0, 0], [0.9, 0.5], [0, 2], [1, 1], 1)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert M.ap_from_ranks([0, 0], [0.9, 0.9], [0, 0], [2, 2], 1)[0] == pytest.approx(1.0)
    assert M.ap_at_k_from_ranks([0, 0], [4, 7], [0.9, 0.5], [0, 2], [0, 0], 2, 1)[0] == pytest.approx(0.5)
    assert np.isnan(M.topk_from_ranks([0], [0], [0], 1, 2)[1])


def test_bad_input_errors(rng):
    phi, psi, order, rel = _data(rng, False, n=5, f=4)
    with pytest.raises(ValueError, match="exactly one"):
        rank_pairs(psi, phi, np.argwhere(rel.T))
    with pytest.raises(ValueError, match="1, 2 or 3"):
        rank_pairs(psi, phi, np.argwhere(rel.T), query_order=order * 0)
    with pytest.raises(ValueError, match="out of range"):
        rank_pairs(psi, phi, [[0, 5]], query_order=order)
    with pytest.raises(ValueError, match="item_segment"):
        rank_pairs(phi, psi, [[0, 1]], item_order=order, item_segment=[0])
    with pytest.raises(ValueError, match="k must be"):
        M.ap_at_k_from_ranks([0], [0], [0.0], [0], [0], 0, 1)
    with pytest.raises(ValueError, match="query indexes"):
        M.ap_from_ranks([3], [0.0], [0], [1], 2)


def test_no_pairs_duplicate_pairs_and_negative_segment_ids(rng):
    phi, psi, order, _ = _data(rng, False, n=5, f=6)
    r = rank_pairs(psi, phi, np.zeros((0, 2), int), query_order=order)
    assert len(r.query) == 0
    assert np.isnan(M.ap_from_ranks(r.query, r.neg_dist, r.below, r.ties, 6)).all()
    seg = np.array([-1, 0, 0, 1, 1, -1])
    r = rank_pairs(phi, psi, [[0, 1], [0, 1], [2, 5]], item_order=order, item_segment=seg)
    np.testing.assert_array_equal(r.query, [0, 2])                 # the duplicate pair once
    d = -np.stack([_neg_dist_row(phi[q], psi, order) for q in (0, 2)])
    for j, (q, f) in enumerate([(0, 1), (2, 5)]):
        assert r.below_all[j] == (d[j] < d[j, f]).sum()
        assert r.below[j] == (d[j][seg == seg[f]] < d[j, f]).sum()
        assert r.segment[j] == seg[f]


def _neg_dist_row(x, psi, order):
    """−D of one raw image x [3, d] to every fact, from factmas.space (float32)."""
    from factmas.space import wildcard_distance
    return -wildcard_distance(torch.as_tensor(x[None]), torch.as_tensor(psi),
                              torch.as_tensor(order)).numpy()[0]


def _brute_counts(neg, rel_pairs, seg, k_exact):
    """Per pair (query, item) by a loop: below, ties, tie_lower within the item's segment and over
    all items, from the dense −D matrix ``neg`` float32 [Q, M] (higher = closer)."""
    out = []
    for q, x in rel_pairs:
        row, v = neg[q], neg[q, x]
        same = seg == seg[x]
        lower = np.arange(len(row)) < x
        b, t = int((row[same] > v).sum()), int((row[same] == v).sum())
        ba, ta = int((row > v).sum()), int((row == v).sum())
        out.append((b, t, int((same & lower & (row == v)).sum()) if b < k_exact else 0,
                    ba, ta, int((lower & (row == v)).sum()) if ba < k_exact else 0))
    return np.array(out, np.int64).reshape(-1, 6)


METHODS = [("sort", 0.25), ("select", 0.0), ("select", 1.0), ("select", 0.25)]
if count_kernel.AVAILABLE:
    METHODS.append(("count", 0.25))


@pytest.mark.parametrize("direction", ["f2i", "i2f"])
@pytest.mark.parametrize("method, select_fraction", METHODS)
def test_selection_and_sorting_equal_brute_force_with_ties(rng, direction, method, select_fraction):
    """The compiled counting (``count_kernel``), the counting by selection of the entries that reach
    a row's smallest relevant score, the sorting path and a per-pair loop agree exactly, on data
    where many scores are exactly equal (zero images: every distance 2 exactly), in blocks of a
    few rows."""
    phi, psi, order, rel = _data(rng, True, n=50, f=40)
    phi[:5] = 0.0                                          # distance exactly 2: −D = −2.0 for all
    seg = rng.integers(0, 3, len(psi))
    if direction == "f2i":
        q_emb, x_emb, pairs, kw = psi, phi, np.argwhere(rel.T), {"query_order": order}
    else:
        q_emb, x_emb, pairs, kw = phi, psi, np.argwhere(rel), {"item_order": order,
                                                               "item_segment": seg}
    r = rank_pairs(q_emb, x_emb, pairs, k_exact=6, block_elements=120,
                   select_fraction=select_fraction, method=method, **kw)
    # the dense −D by the same float32 steps as the ranking (torch product, ×(2/o), −2), per order
    from factmas.evaluation.ranking import _scale
    from factmas.evaluation.retrieval import prefix, unit_slots
    qh, xh = unit_slots(q_emb), unit_slots(x_emb)
    dense = np.empty((len(qh), len(xh)), np.float32)
    for o in (1, 2, 3):
        ip = torch.from_numpy(prefix(qh, o)) @ torch.from_numpy(prefix(xh, o)).T
        d = ip.mul_(float(_scale(o))).sub_(2.0).numpy()
        if direction == "f2i":
            dense[order == o] = d[order == o]
        else:
            dense[:, order == o] = d[:, order == o]
    s = np.zeros(len(xh), np.int64) if direction == "f2i" else seg
    got = np.stack([r.below, r.ties, r.tie_lower, r.below_all, r.ties_all, r.tie_lower_all], 1)
    want = _brute_counts(dense, np.stack([r.query, r.item], 1), s, 6)
    assert (want[:, 1] > 1).sum() > 20                     # many exact ties
    for b, lo in ((0, 2), (3, 5)):                         # tie_lower only matters (and is exact)
        far = want[:, b] >= 6                              # where below < k_exact
        got[far, lo] = want[far, lo] = 0
    # the per-segment counts: their sums are the counts over all, the own segment's the own counts
    cols = np.searchsorted(r.segments, s[r.item])
    np.testing.assert_array_equal(r.below_seg.sum(1), r.below_all)
    np.testing.assert_array_equal(r.ties_seg.sum(1), r.ties_all)
    np.testing.assert_array_equal(r.below_seg[np.arange(len(cols)), cols], r.below)
    np.testing.assert_array_equal(r.ties_seg[np.arange(len(cols)), cols], r.ties)
    np.testing.assert_array_equal(r.neg_dist, dense[r.query, r.item])
    np.testing.assert_array_equal(got, want)
    if method == "select" and select_fraction == 1.0:
        assert r.blocks["sorted_blocks"] == 0 and r.blocks["selected_blocks"] > 0
    if method == "sort" or select_fraction == 0.0:
        assert r.blocks["selected_blocks"] == 0 and r.blocks["sorted_blocks"] > 0
    if method == "count":
        assert r.blocks["counted_blocks"] > 0 and r.blocks["selected_blocks"] == 0


def test_float_keys_keep_the_float_order(rng):
    from factmas.evaluation.ranking import _float_keys
    x = np.r_[rng.standard_normal(200).astype(np.float32), np.float32(-0.0), np.float32(0.0),
              np.float32(np.inf), np.float32(-np.inf), np.float32(1e-45), np.float32(-1e-45)]
    k = _float_keys(x)
    np.testing.assert_array_equal(x[:, None] < x[None, :], k[:, None] < k[None, :])
    np.testing.assert_array_equal(x[:, None] == x[None, :], k[:, None] == k[None, :])


@pytest.mark.parametrize("method, select_fraction", [("select", 0.0), ("select", 1.0)]
                         + ([("count", 0.25)] if count_kernel.AVAILABLE else []))
def test_recall_at_k_from_ranks_equals_loop_with_ties(rng, method, select_fraction):
    """Recall@K (first relevant item within the top K, ties by lower index) from the exact ranks
    equals a per-query loop over the dense distances, and ``M.recall_at_k``, on tied data."""
    phi, psi, order, rel = _data(rng, True, n=70, f=30)
    d, i = ImageIndex(phi, gpu=False).search(psi, order, len(phi))
    dense = np.empty((len(psi), len(phi)), np.float32)
    dense[np.arange(len(psi))[:, None], i] = d                  # exact (unit slots ±0.5)
    r = rank_pairs(psi, phi, np.argwhere(rel.T), query_order=order, k_exact=10, block_elements=333,
                   select_fraction=select_fraction, method=method)
    for k in (1, 5, 10):
        hits = M.topk_from_ranks(r.query, r.below, r.tie_lower, k, len(psi))
        want = []
        for q in range(len(psi)):
            if rel[:, q].any():
                ranked = rel[np.argsort(dense[q], kind="stable"), q]   # closest first, lower index
                want.append(np.argmax(ranked) < k)
        assert np.nanmean(hits) == pytest.approx(np.mean(want), abs=0)
        assert M.recall_at_k(-dense, rel.T, k) == pytest.approx(np.mean(want), abs=0)
    assert sum(len(np.unique(row)) < len(row) for row in dense) > 20          # ties present
    with pytest.raises(ValueError, match="k must be"):
        M.recall_at_k(-dense, rel.T, 0)


def test_default_selects_for_a_model_that_ranks_true_items_high(rng):
    """Where every query's true item is among its closest, the default counts by selection (no row
    sorted) and agrees with the sorting path."""
    q = rng.standard_normal((40, 3, 8)).astype(np.float32)
    x = np.concatenate([q + 0.01 * rng.standard_normal(q.shape).astype(np.float32),
                        rng.standard_normal((400, 3, 8)).astype(np.float32)])
    order = rng.integers(1, 4, len(x))
    x[np.arange(3)[None, :] >= order[:, None]] = 0.0
    pairs = np.stack([np.arange(40), np.arange(40)], 1)
    r = rank_pairs(q, x, pairs, item_order=order, block_elements=4000, method="select")
    s = rank_pairs(q, x, pairs, item_order=order, block_elements=4000, method="sort")
    assert r.blocks["selected_blocks"] > 0 and r.blocks["sorted_blocks"] == 0
    for name in ("below", "ties", "tie_lower", "below_all", "ties_all", "tie_lower_all"):
        np.testing.assert_array_equal(getattr(r, name), getattr(s, name))


needs_numba = pytest.mark.skipif(not count_kernel.AVAILABLE, reason="numba is not installed")


@needs_numba
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_count_kernel_equals_loop_with_ties_caps_and_zero_signs(rng, chunk):
    """``count_rows``: entries > and == each needle of its row equal a per-needle loop, on rounded
    values (many exact ties, −0.0 against +0.0), with empty rows, a cap that may stop a needle
    (then gt ≥ cap) and rows with more than ``linear_max`` uncapped needles left at 0."""
    r, n, linear_max = 40, 300, 12
    block = np.round(rng.standard_normal((r, n)), 1).astype(np.float32)
    block[block == 0] = np.float32(-0.0)
    per_row = rng.integers(0, 16, r)
    per_row[:3] = [0, 15, 1]
    starts = np.r_[0, np.cumsum(per_row)].astype(np.int64)
    vs = np.concatenate([np.sort(np.where(rng.random(m) < 0.7, rng.choice(block[i], m),
                                          np.round(rng.standard_normal(m), 1))).astype(np.float32)
                         for i, m in enumerate(per_row)])
    vs[vs == 0] = np.float32(0.0)
    row = np.repeat(np.arange(r), per_row)
    want_gt = (block[row] > vs[:, None]).sum(1)
    want_eq = (block[row] == vs[:, None]).sum(1)
    assert (want_eq > 1).sum() > 20 and (np.signbit(block) & (block == 0)).any()
    heavy = np.repeat(per_row > linear_max, per_row)
    cap = np.where(rng.random(len(vs)) < 0.5, rng.integers(1, 60, len(vs)), 0)
    gt, eq = count_kernel.count_rows(block, starts, vs, linear_max=linear_max, chunk=chunk)
    np.testing.assert_array_equal(gt, np.where(heavy, 0, want_gt))
    np.testing.assert_array_equal(eq, np.where(heavy, 0, want_eq))
    gt, eq = count_kernel.count_rows(block, starts, vs, cap, linear_max=linear_max, chunk=chunk)
    heavy_capped = count_kernel.heavy_rows(starts, cap, linear_max)   # only uncapped needles count
    assert (heavy_capped < (per_row > linear_max)).any()               # a row counted once capped
    heavy = np.repeat(heavy_capped, per_row)
    np.testing.assert_array_equal(gt[heavy], 0)
    stopped = (cap > 0) & (want_gt >= cap)
    assert stopped[~heavy].sum() > 10
    np.testing.assert_array_equal(gt[~heavy & ~stopped], want_gt[~heavy & ~stopped])
    np.testing.assert_array_equal(eq[~heavy & ~stopped], want_eq[~heavy & ~stopped])
    assert (gt[~heavy & stopped] >= cap[~heavy & stopped]).all()
    assert (gt[~heavy & stopped] <= want_gt[~heavy & stopped]).all()
    with pytest.raises(ValueError, match="starts"):
        count_kernel.count_rows(block, starts[:-1], vs)
    with pytest.raises(ValueError, match="chunk"):
        count_kernel.count_rows(block, starts, vs, chunk=0)


@pytest.mark.parametrize("method", ["select", "sort"] + (["count"] if count_kernel.AVAILABLE else []))
def test_capped_pairs_exact_below_k_and_popular_rows(rng, method):
    """``capped_pairs`` get counts equal to a per-pair loop wherever fewer than k_exact items are
    closer, and at least k_exact elsewhere; pairs also given as exact pairs stay exact. A query with
    more than ``count_kernel.LINEAR_MAX`` true items (a popular fact: its row is sorted by the
    counting method) gets exact counts too."""
    n, f, k = 150, 40, 6
    phi, psi, order, rel = _data(rng, True, n=n, f=f)
    rel[:, 0] = rng.random(n) < 0.6                       # fact 0: about 90 true images
    assert rel[:, 0].sum() > count_kernel.LINEAR_MAX
    pairs = np.argwhere(rel.T)                            # (fact, image)
    extra = np.argwhere(rng.random((f, n)) < 0.3)         # capped (fact, image) pairs
    r = rank_pairs(psi, phi, pairs, query_order=order, k_exact=k, block_elements=900,
                   method=method, capped_pairs=np.concatenate([extra, pairs[:5]]))
    from factmas.evaluation.ranking import _scale
    from factmas.evaluation.retrieval import prefix, unit_slots
    qh, xh = unit_slots(psi), unit_slots(phi)
    dense = np.empty((f, n), np.float32)
    for o in (1, 2, 3):
        ip = torch.from_numpy(prefix(qh, o)) @ torch.from_numpy(prefix(xh, o)).T
        dense[order == o] = ip.mul_(float(_scale(o))).sub_(2.0).numpy()[order == o]
    want = _brute_counts(dense, np.stack([r.query, r.item], 1), np.zeros(n, np.int64), k)
    got = np.stack([r.below, r.ties, r.tie_lower, r.below_all, r.ties_all, r.tie_lower_all], 1)
    key = r.query * n + r.item
    exact_pair = np.isin(key, pairs[:, 0] * n + pairs[:, 1])
    np.testing.assert_array_equal(r.capped, ~exact_pair)
    assert r.capped.sum() > 100
    far = want[:, 0] >= k
    for b, lo in ((0, 2), (3, 5)):                         # tie_lower: only where below < k
        got[far, lo] = want[far, lo] = 0
    exact = exact_pair | ~far
    np.testing.assert_array_equal(got[exact], want[exact])
    assert (got[~exact, 0] >= k).all() and (got[~exact, 3] >= k).all()


@needs_numba
def test_count_kernel_maps_inner_products_as_torch(rng):
    """With ``scale``, the kernel maps each row to −D = fl(fl(scale·IP) − 2) in place, bit for bit
    as torch's ``mul_(scale).sub_(2.0)`` (no fused multiply-add), and counts on those values."""
    from factmas.evaluation.ranking import _scale
    ip = rng.uniform(-3, 3, (20, 257)).astype(np.float32)
    for o in (1, 2, 3):
        want = torch.from_numpy(ip.copy()).mul_(float(_scale(o))).sub_(2.0).numpy()
        per_row = rng.integers(0, 5, len(ip))
        starts = np.r_[0, np.cumsum(per_row)].astype(np.int64)
        vs = np.concatenate([np.sort(rng.choice(want[i], m)) for i, m in enumerate(per_row)])
        got = ip.copy()
        gt, eq = count_kernel.count_rows(got, starts, vs, scale=float(_scale(o)))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        row = np.repeat(np.arange(len(ip)), per_row)
        np.testing.assert_array_equal(gt, (want[row] > vs[:, None]).sum(1))
        np.testing.assert_array_equal(eq, (want[row] == vs[:, None]).sum(1))


def test_unit_slots_given_once_equal_raw_embeddings(rng):
    """``unit=True`` with ``retrieval.unit_slots`` computed by the caller gives the same counts as
    raw embeddings; a wrong shape is an error."""
    from factmas.evaluation.retrieval import unit_slots
    phi, psi, order, rel = _data(rng, False, n=30, f=25)
    a = rank_pairs(phi, psi, np.argwhere(rel), item_order=order, block_elements=200)
    b = rank_pairs(unit_slots(phi), unit_slots(psi), np.argwhere(rel), item_order=order,
                   block_elements=200, unit=True)
    for name in ("neg_dist", "below", "ties", "tie_lower", "below_all", "ties_all"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match=r"\[N, 3, d\]"):
        rank_pairs(unit_slots(phi)[:, :2], unit_slots(psi), [[0, 0]], item_order=order, unit=True)


ULP_AT_2 = float(np.spacing(np.float32(2.0)))       # 2.4e-7: a float32 ulp at |−D| = 2


def _dense_i2f(phi, psi, order):
    """−D float32 [N, F] of every image (rows) to every fact, by the steps of the image → fact
    blocks (torch product of the unit slots per fact order, ×(2/o), −2)."""
    from factmas.evaluation.ranking import _scale
    from factmas.evaluation.retrieval import prefix, unit_slots
    ph, ps = unit_slots(phi), unit_slots(psi)
    dense = np.empty((len(ph), len(ps)), np.float32)
    for o in (1, 2, 3):
        cols = order == o
        ip = torch.from_numpy(prefix(ph, o)) @ torch.from_numpy(prefix(ps[cols], o)).T
        dense[:, cols] = ip.mul_(float(_scale(o))).sub_(2.0).numpy()
    return dense


@pytest.mark.skipif(not count_kernel.AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("ties, threads, block", [(True, 1, 120), (True, 2, 700), (False, 1, 1 << 22)])
def test_columns_count_fact_to_image_in_the_image_blocks(rng, ties, threads, block,
                                                         products_depend_on_position):
    """``ColumnCounter``: fact → image counts (below, ties, tie_lower: closer images, equally close,
    equally close with a lower index), counted in the image → fact blocks against rounding windows,
    equal a per-pair loop over the dense −D — with exact ties, zero images (−D = −2 for all), a fact
    with more than ``LINEAR_MAX`` true images (binary-search path), facts without any, images
    without a true fact, and blocks of a few rows; the image → fact counts stay as without it."""
    from factmas.evaluation.column_ranks import ColumnCounter
    from factmas.evaluation.retrieval import unit_slots
    phi, psi, order, rel = _data(rng, ties, n=160, f=70)
    phi[:6] = 0.0
    rel[:, 3] = rng.random(160) < 0.6                     # > 48 true images: heavy column
    rel[:, 5] = False                                      # a fact without a true image
    rel[150:] = False                                      # images without a true fact
    seg = rng.integers(0, 3, len(psi))
    ph, ps = unit_slots(phi), unit_slots(psi)
    cc = ColumnCounter(ph, ps, order, np.argwhere(rel.T))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        r = rank_pairs(ph, ps, np.argwhere(rel), item_order=order, item_segment=seg, k_exact=6,
                       block_elements=block, method="count", unit=True, columns=cc)
        plain = rank_pairs(ph, ps, np.argwhere(rel), item_order=order, item_segment=seg, k_exact=6,
                           block_elements=block, method="count", unit=True)
    finally:
        torch.set_num_threads(old)
    # −D of a pair: equal, or (on a BLAS whose products depend on the entry's position, conftest's
    # products_depend_on_position fixture: the two calls cut the parts differently) within 2 float32
    # ulps of 2 (1 ulp of an inner product ≤ 2, ×2/o, then −2 rounded once more)
    if products_depend_on_position:
        np.testing.assert_allclose(r.neg_dist, plain.neg_dist, rtol=0, atol=ULP_AT_2 * 2)
    else:
        np.testing.assert_array_equal(r.neg_dist, plain.neg_dist)
    for name in ("query", "item", "below", "ties", "tie_lower", "below_all",
                 "ties_all", "tie_lower_all", "below_seg", "ties_seg"):
        np.testing.assert_array_equal(getattr(r, name), getattr(plain, name), err_msg=name)
    fact, image, neg, below, tie, lower = cc.result()
    dense = _dense_i2f(phi, psi, order).T                  # [F, N]: fact rows
    want = _brute_counts(dense, np.stack([fact, image], 1), np.zeros(len(phi), np.int64), 10 ** 9)
    np.testing.assert_array_equal(np.stack([fact, image], 1), np.argwhere(rel.T))
    if products_depend_on_position:                 # ``dense`` cuts the products another way
        np.testing.assert_allclose(neg, dense[fact, image], rtol=0, atol=ULP_AT_2 * 2)
    else:
        np.testing.assert_array_equal(neg, dense[fact, image])
    np.testing.assert_array_equal(np.stack([below, tie, lower], 1), want[:, :3])
    if ties:
        assert (want[:, 1] > 1).sum() > 20 and (want[:, 2] > 0).sum() > 5     # ties do occur
    assert cc.parts and any(p["nh"] for p in cc.parts.values())                # heavy path ran


@pytest.mark.skipif(not count_kernel.AVAILABLE, reason="needs numba")
def test_columns_refuse_other_directions_and_bad_pairs(rng):
    from factmas.evaluation.column_ranks import ColumnCounter
    from factmas.evaluation.retrieval import unit_slots
    phi, psi, order, rel = _data(rng, False, n=20, f=10)
    ph, ps = unit_slots(phi), unit_slots(psi)
    with pytest.raises(ValueError, match="out of range"):
        ColumnCounter(ph, ps, order, np.array([[10, 0]]))
    cc = ColumnCounter(ph, ps, order, np.argwhere(rel.T))
    with pytest.raises(ValueError, match="columns need"):
        rank_pairs(ps, ph, np.argwhere(rel.T), query_order=order, unit=True, columns=cc)
    with pytest.raises(ValueError, match="columns need"):
        rank_pairs(ph, ps, np.argwhere(rel), item_order=order, unit=True, method="sort", columns=cc)


def test_window_delta_bounds_float32_dot_products(rng):
    """The window's δ bounds the float32 error of torch's dot products of unit slots (L = 192, the
    benchmark's 3 × 64), measured against float64 on 20,000 random pairs, with room to spare."""
    from factmas.evaluation.column_ranks import window_delta
    a = rng.standard_normal((20000, 192)).astype(np.float32)
    b = rng.standard_normal((20000, 192)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    ip32 = (torch.from_numpy(a[:200]) @ torch.from_numpy(b).T).numpy().astype(np.float64)
    ip64 = a[:200].astype(np.float64) @ b.astype(np.float64).T
    err = np.abs(ip32 - ip64).max()
    assert 0 < err < window_delta(192, 1.0) / 10
