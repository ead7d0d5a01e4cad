"""Metrics against sklearn and brute-force references, on fresh random inputs; R metrics by hand."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from factmas.evaluation import metrics as M


def _random_case(rng, q=30, n=50, ties=False):
    scores = rng.normal(size=(q, n))
    if ties:                                    # few distinct values → many ties
        scores = np.round(scores * 2) / 2
    rel = rng.random((q, n)) < rng.uniform(0.02, 0.5, size=(q, 1))
    rel[:, 0] |= ~rel.any(axis=1)               # every query has a relevant item
    return scores, rel


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_equals_sklearn(ties):
    rng = np.random.default_rng()
    scores, rel = _random_case(rng, ties=ties)
    ours = M.average_precision(scores, rel)
    ref = np.array([average_precision_score(r, s) for s, r in zip(scores, rel)])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    assert M.mean_ap(ours) == pytest.approx(ref.mean(), rel=1e-12)
    # 1-D input gives a float, the same value
    assert M.average_precision(scores[3], rel[3]) == pytest.approx(ref[3], rel=1e-12)


def test_directional_map_equals_sklearn_per_row_and_column():
    rng = np.random.default_rng()
    scores, rel = _random_case(rng, q=20, n=15)
    rel[:, 3] = False                             # a fact without images is left out
    rel[:, 0] |= ~rel.any(axis=1)                 # every image keeps a true fact
    i2f = np.mean([average_precision_score(r, s) for s, r in zip(scores, rel)])
    f2i = np.mean([average_precision_score(r, s) for s, r in zip(scores.T, rel.T) if r.any()])
    assert M.image_to_fact_map(scores, rel) == pytest.approx(i2f, rel=1e-12)
    assert M.fact_to_image_map(scores, rel) == pytest.approx(f2i, rel=1e-12)


def test_average_precision_tie_invariant_and_no_relevant_is_nan():
    s = np.array([[0.5, 0.5, 0.5, 0.1], [0.9, 0.2, 0.3, 0.4]])
    r = np.array([[1, 0, 0, 1], [0, 0, 0, 0]], bool)
    ap = M.average_precision(s, r)
    # the three tied items form one threshold: P = 1/3, R = 1/2; then P = 2/4 at R = 1
    assert ap[0] == pytest.approx(0.5 * (1 / 3) + 0.5 * 0.5)
    assert np.isnan(ap[1])
    assert M.mean_ap(ap) == pytest.approx(ap[0])
    assert np.isnan(M.mean_ap([np.nan]))


def _ap_at_k_loop(scores, rel, k):
    out = []
    for s, r in zip(scores, rel):
        ranked = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        hits, total = 0, 0.0
        for i, idx in enumerate(ranked, start=1):
            if r[idx]:
                hits += 1
                total += hits / i
        n_rel = int(r.sum())
        out.append(total / min(k, n_rel) if n_rel else np.nan)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 5, 17, 100])
def test_ap_at_k_equals_brute_force(k):
    rng = np.random.default_rng()
    scores, rel = _random_case(rng, q=25, n=60, ties=(k == 5))
    rel[0] = False                               # one query without relevant items → NaN
    np.testing.assert_allclose(M.ap_at_k(scores, rel, k), _ap_at_k_loop(scores, rel, k),
                               rtol=1e-12, equal_nan=True)


def test_ap_at_k_full_depth_equals_ap_without_ties():
    rng = np.random.default_rng()
    scores, rel = _random_case(rng)
    np.testing.assert_allclose(M.ap_at_k(scores, rel, scores.shape[1]),
                               M.average_precision(scores, rel), rtol=1e-12)


def test_ap_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        M.ap_at_k(np.zeros(3), np.ones(3, bool), 0)
    with pytest.raises(ValueError, match="same shape"):
        M.ap_at_k(np.zeros(3), np.ones(4, bool), 2)
    with pytest.raises(ValueError, match="NaN"):
        M.average_precision(np.array([np.nan, 1.0]), np.array([True, False]))


def test_topk_accuracy_equals_loop():
    rng = np.random.default_rng()
    scores, rel = _random_case(rng, q=40, n=30)
    rel[:3] = False
    for k in (1, 5):
        hits = [r[np.argsort(-s, kind="stable")[:k]].any() for s, r in zip(scores, rel) if r.any()]
        assert M.topk_accuracy(scores, rel, k) == pytest.approx(np.mean(hits))
    assert np.isnan(M.topk_accuracy(scores, np.zeros_like(rel), 1))


# R[i, j]: score on task j after training tasks 0..i (T = 3)
R = np.array([[0.8, 0.1, 0.2],
              [0.6, 0.7, 0.3],
              [0.5, 0.4, 0.9]])
B = np.array([0.05, 0.15, 0.1])


def test_average_accuracy_on_hand_made_R():
    assert M.average_accuracy(R) == pytest.approx((0.5 + 0.4 + 0.9) / 3)


def test_forgetting_on_hand_made_R():
    # task 0: max(0.8, 0.6) - 0.5 = 0.3; task 1: max(0.1, 0.7) - 0.4 = 0.3
    assert M.forgetting(R) == pytest.approx(0.3)
    R2 = R.copy()
    R2[0, 1] = 0.95                              # Chaudhry's max runs over all l < T-1, also l < j
    assert M.forgetting(R2) == pytest.approx((0.3 + 0.55) / 2)


def test_backward_transfer_on_hand_made_R():
    # ((0.5 - 0.8) + (0.4 - 0.7)) / 2
    assert M.backward_transfer(R) == pytest.approx(-0.3)


def test_forward_transfer_on_hand_made_R():
    # ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.1 - 0.15) + (0.3 - 0.1)) / 2
    assert M.forward_transfer(R, B) == pytest.approx(0.075)
    with pytest.raises(ValueError, match="one entry per task"):
        M.forward_transfer(R, B[:2])


def test_R_metrics_single_task_and_bad_shape():
    one = np.array([[0.7]])
    assert M.average_accuracy(one) == pytest.approx(0.7)
    assert np.isnan(M.forgetting(one)) and np.isnan(M.backward_transfer(one))
    assert np.isnan(M.forward_transfer(one, [0.1]))
    with pytest.raises(ValueError, match="square"):
        M.forgetting(np.zeros((2, 3)))
