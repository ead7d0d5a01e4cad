"""Sharded fact → image counts (factmas.evaluation.shard_ranks): the images split into contiguous
shares, each counted on its own and merged, against a brute-force loop over the dense −D and
against the one-process ``ColumnCounter`` — with exact ties across shares, a heavy fact, facts
without true images and shares of a few rows. Runs in one process (the ranks simulated in turn);
the 2-process gloo test is tests/distributed/test_shard_eval.py."""
import numpy as np
import pytest
import torch

from factmas.evaluation import count_kernel
from factmas.evaluation.ranking import _scale, rank_pairs
from factmas.evaluation.retrieval import prefix, unit_slots

pytestmark = pytest.mark.skipif(not count_kernel.AVAILABLE, reason="needs numba")


def _tied(rng, n, d=8, protos=4):
    """float32 [n, 3, d] from a few prototypes with entries ±1: exact products, many exact ties."""
    p = np.zeros((protos, 3, d), np.float32)
    for a in range(protos):
        for s in range(3):
            p[a, s, rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return p[rng.integers(0, protos, (n, 3)), np.arange(3)[None, :]]


def _data(rng, ties, n=150, f=60):
    phi = _tied(rng, n) if ties else rng.standard_normal((n, 3, 8)).astype(np.float32)
    psi = _tied(rng, f) if ties else rng.standard_normal((f, 3, 8)).astype(np.float32)
    order = rng.integers(1, 4, f)
    order[:3] = [1, 2, 3]
    psi[np.arange(3)[None, :] >= order[:, None]] = 0.0
    rel = rng.random((n, f)) < 0.12
    rel[:, 3] = rng.random(n) < 0.6                        # > 48 true images: a heavy column
    rel[:, 5] = False                                      # a fact without a true image
    rel[n - 8:] = False                                    # images without a true fact
    return phi, psi, order, rel


def _dense(ph, ps, order):
    """−D float32 [N, F] by the steps of the image → fact blocks."""
    out = np.empty((len(ph), len(ps)), np.float32)
    for o in (1, 2, 3):
        c = order == o
        ip = torch.from_numpy(prefix(ph, o)) @ torch.from_numpy(prefix(ps[c], o)).T
        out[:, c] = ip.mul_(float(_scale(o))).sub_(2.0).numpy()
    return out


def _brute(dense, fact, image):
    """Per-pair loop: (below, ties, tie_lower) of each (fact, image) over all images."""
    out = np.zeros((len(fact), 3), np.int64)
    for k, (f, i) in enumerate(zip(fact, image)):
        col, v = dense[:, f], dense[i, f]
        out[k] = (col > v).sum(), (col == v).sum(), (col[:i] == v).sum()
    return out


def sharded_counts(ph, ps, order, pairs_fi, cuts, block_rows=None):
    """The counts of ``shard_ranks`` with the image rows cut at ``cuts`` (each share one 'rank')."""
    from factmas.evaluation.shard_ranks import (ShardColumnCounter, local_estimates, merge_partials,
                                                sorted_pairs)
    n = len(ph)
    pairs = sorted_pairs(pairs_fi, n)
    bounds = list(zip(cuts[:-1], cuts[1:]))
    est = sum(local_estimates(ph[lo:hi], ps, order, pairs, lo) for lo, hi in bounds)
    row_norm = max(float(np.linalg.norm(ph[lo:hi], axis=2).max(initial=0.0)) for lo, hi in bounds)
    counters = []
    for lo, hi in bounds:
        cc = ShardColumnCounter(ph[lo:hi], ps, order, pairs, lo, n, est, row_norm)
        mine = (pairs[:, 1] >= lo) & (pairs[:, 1] < hi)
        local = np.stack([pairs[mine, 1] - lo, pairs[mine, 0]], 1)
        rank_pairs(ph[lo:hi], ps, local, item_order=order, method="count", unit=True,
                   max_rows=block_rows, columns=cc)
        counters.append(cc)
    merged = merge_partials([c.partial() for c in counters])
    res = [c.resolve(merged["neg"]) for c in counters]
    resolved = {k: sum(r[k] for r in res) for k in ("below", "ties", "lower")}
    return counters[0].finish(merged["above"], merged["neg"], resolved)


@pytest.mark.parametrize("ties, cuts, rows", [(True, (0, 75, 150), None), (True, (0, 1, 70, 150), 7),
                                              (True, (0, 142, 150), 5),   # a share without a true pair
                                              (False, (0, 100, 150), 16)])
def test_sharded_counts_equal_brute_force_and_one_process(rng, ties, cuts, rows):
    from factmas.evaluation.column_ranks import ColumnCounter
    phi, psi, order, rel = _data(rng, ties)
    phi[:5] = 0.0                                          # zero images: −D = −2 for every fact
    ph, ps = unit_slots(phi), unit_slots(psi)
    pairs_fi = np.argwhere(rel.T)                          # (fact, image)
    got = sharded_counts(ph, ps, order, pairs_fi, np.array(cuts), rows)
    one = ColumnCounter(ph, ps, order, pairs_fi)
    rank_pairs(ph, ps, np.argwhere(rel), item_order=order, method="count", unit=True,
               max_rows=rows, columns=one)
    want_one = one.result()
    for a, b, name in zip(got, want_one, ("fact", "image", "neg", "below", "ties", "lower")):
        np.testing.assert_array_equal(a, b, err_msg=name)
    dense = _dense(ph, ps, order)
    fact, image, neg = got[0], got[1], got[2]
    np.testing.assert_array_equal(neg, dense[image, fact])
    want = _brute(dense, fact, image)
    np.testing.assert_array_equal(np.stack(got[3:], 1), want)
    if ties:                                               # ties do occur, across shares too
        assert (want[:, 1] > 1).sum() > 20 and (want[:, 2] > 0).sum() > 5


def test_merge_refuses_pairs_not_read_once(rng):
    from factmas.evaluation.shard_ranks import merge_partials
    part = {"above": np.zeros(3, np.int64), "neg": np.zeros(3, np.float32),
            "seen": np.array([1, 0, 1])}
    with pytest.raises(RuntimeError, match="1 true pairs not read exactly once"):
        merge_partials([part])
    with pytest.raises(RuntimeError, match="3 true pairs"):           # the same share twice
        merge_partials([dict(part, seen=np.ones(3, np.int64))] * 2)


def test_resolve_found_matches_a_loop(rng):
    """``resolve_found`` (pure) against a per-entry loop, with ties and lower rows."""
    from factmas.evaluation.shard_ranks import resolve_found
    P = 7
    neg = rng.choice([-1.0, -0.5, 0.0], P).astype(np.float32)
    image = rng.integers(0, 20, P)
    found = [(rng.integers(0, P, 30), rng.integers(0, 20, 30), rng.choice([-1.0, -0.5, 0.0], 30).astype(np.float32))
             for _ in range(2)]
    got = resolve_found(found, neg, image)
    want = {k: np.zeros(P, np.int64) for k in ("below", "ties", "lower")}
    for g, row, x in found:
        for gg, rr, xx in zip(g, row, x):
            want["below"][gg] += xx > neg[gg]
            want["ties"][gg] += xx == neg[gg]
            want["lower"][gg] += (xx == neg[gg]) and rr < image[gg]
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert resolve_found([], neg, image)["ties"].tolist() == [0] * P


def test_estimates_of_another_length_are_refused(rng):
    from factmas.evaluation.shard_ranks import ShardColumnCounter
    phi, psi, order, rel = _data(rng, False, n=20, f=10)
    ph, ps = unit_slots(phi), unit_slots(psi)
    with pytest.raises(ValueError, match="estimates for"):
        ShardColumnCounter(ph[:10], ps, order, np.argwhere(rel.T), 0, 20, np.zeros(1), 1.0)
