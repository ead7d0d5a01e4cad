"""The calibrator P(fact true | D): against scikit-learn, monotone, JSON without pickle, bad files,
the threshold rule against a brute-force loop, the candidate pairs against brute-force distances."""
import json

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from factmas.evaluation.calibration import (FORMAT, CalibrationError, Calibrator, choose_threshold,
                                            fit_isotonic, load_calibrator, reliability,
                                            save_calibrator, shown_stats)
from factmas.evaluation.calibration_fit import candidate_pairs, is_true_pair, weights_sha256
from factmas.space import wildcard_distance


def _noisy_pairs(rng, n=3000):
    d = rng.uniform(0, 4, n)
    y = rng.uniform(size=n) < 1 / (1 + np.exp(3 * (d - 1.5)))
    return d, y


def test_breakpoints_give_sklearns_predictions_on_fresh_data(rng):
    d, y = _noisy_pairs(rng)
    x_th, y_th = fit_isotonic(d, y)
    ref = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0, y_max=1).fit(d, y)
    fresh = rng.uniform(-1, 5, 20000)                 # also outside the fitted range (clipped)
    cal = Calibrator(x_th, y_th, 0.5)
    np.testing.assert_allclose(cal.predict(fresh), ref.predict(fresh), rtol=0, atol=1e-12)
    assert cal.predict(fresh).shape == fresh.shape


def test_monotone_and_in_unit_interval(rng):
    d, y = _noisy_pairs(rng, 500)
    cal = Calibrator(*fit_isotonic(d, y), 0.5)
    grid = np.linspace(-0.5, 4.5, 5001)
    p = cal.predict(grid)
    assert np.all(np.diff(p) <= 1e-15) and p.min() >= 0 and p.max() <= 1
    assert p[0] > p[-1]                              # it does fall: the data depend on D


def test_one_distinct_distance_and_bad_input():
    cal = Calibrator(*fit_isotonic(np.full(10, 0.7), np.r_[np.ones(3), np.zeros(7)]), 0.5)
    np.testing.assert_allclose(cal.predict([0.0, 0.7, 3.0]), 0.3)
    with pytest.raises(CalibrationError):
        fit_isotonic(np.zeros(0), np.zeros(0))
    with pytest.raises(CalibrationError):
        fit_isotonic(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(CalibrationError):
        fit_isotonic(np.array([0.1, 0.2]), np.array([1]))


def test_json_round_trip_without_pickle(rng, tmp_path):
    d, y = _noisy_pairs(rng)
    cal = Calibrator(*fit_isotonic(d, y), 0.4321, {"fitted_on": {"pairs": len(d)}, "k": 5})
    path = save_calibrator(tmp_path / "calibration.json", cal)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]   # no temp file left
    raw = json.loads(path.read_text(encoding="utf-8"))                          # plain JSON
    assert raw["format"] == FORMAT and len(raw["distance"]) == len(raw["probability"])
    back = load_calibrator(path)
    fresh = rng.uniform(-1, 5, 5000)
    assert np.array_equal(back.predict(fresh), cal.predict(fresh))               # floats exact
    assert back.threshold == 0.4321 and back.meta == cal.meta


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("distance"), "distance"),
    (lambda d: d.update(distance=d["distance"][::-1]), "distance"),
    (lambda d: d.update(probability=d["probability"][::-1]), "probability"),
    (lambda d: d.update(probability=[2.0] * len(d["probability"])), "probability"),
    (lambda d: d.update(probability=d["probability"][:-1]), "breakpoints"),
    (lambda d: d.update(distance=["a"] * len(d["distance"])), "distance"),
    (lambda d: d.update(threshold=1.5), "threshold"),
    (lambda d: d.update(format="other/9"), "format"),
])
def test_invalid_files_name_the_key(rng, tmp_path, change, key):
    d, y = _noisy_pairs(rng, 300)
    raw = Calibrator(*fit_isotonic(d, y), 0.5).to_dict()
    change(raw)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match=key) as e:
        load_calibrator(path)
    assert str(path) in str(e.value)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"format": "factmas-calibration/1", "distance": [0.1, ')
    with pytest.raises(CalibrationError, match="not JSON"):
        load_calibrator(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(CalibrationError, match="JSON object"):
        load_calibrator(bad)
    with pytest.raises(FileNotFoundError):
        load_calibrator(tmp_path / "absent.json")


def _brute_threshold(p, y, target):
    best = None
    for t in sorted(set(p.tolist()), reverse=True):
        shown = [yi for pi, yi in zip(p, y) if pi >= t]
        if sum(shown) / len(shown) >= target - 1e-12:
            best = t                                  # keep the smallest t that reaches it
    return (best, True) if best is not None else (max(p), False)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8, 0.99])
def test_threshold_rule_against_a_loop(rng, target):
    for _ in range(5):
        p = rng.choice(np.linspace(0, 1, 13), 200)   # ties, as isotonic steps give
        y = rng.uniform(size=200) < p
        assert choose_threshold(p, y, target) == _brute_threshold(p, y, target)
    p = np.array([0.3, 0.2, 0.1])
    assert choose_threshold(p, np.zeros(3, bool), 0.5) == (0.3, False)     # unreachable target


def test_shown_stats_and_reliability_against_loops(rng):
    p = rng.uniform(size=400)
    y = rng.uniform(size=400) < p
    img = rng.integers(0, 60, 400)
    s = shown_stats(p, y, img, 0.7)
    shown = [i for i in range(400) if p[i] >= 0.7]
    assert s["shown"] == len(shown) and s["precision"] == pytest.approx(np.mean(y[shown]))
    assert s["coverage"] == pytest.approx(len({img[i] for i in shown}) / len(set(img.tolist())))
    r = reliability(p, y, bins=10)
    ece = 0.0
    for b in range(10):
        m = [i for i in range(400) if min(int(p[i] * 10), 9) == b]
        if m:
            ece += len(m) / 400 * abs(np.mean(y[m]) - np.mean(p[m]))
    assert r["ece"] == pytest.approx(ece) and r["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_candidate_pairs_against_brute_force(rng):
    n, f, dim = 7, 11, 4
    phi = torch.as_tensor(rng.normal(size=(n, 3, dim)), dtype=torch.float32)
    psi = torch.as_tensor(rng.normal(size=(f, 3, dim)), dtype=torch.float32)
    order = rng.integers(1, 4, f)
    ids = np.sort(rng.choice(50, n, replace=False))
    pairs = np.stack([rng.choice(ids, 15), rng.integers(0, f, 15)], 1)
    c = candidate_pairs(phi, psi, order, ids, pairs, k=4)
    dist = wildcard_distance(phi, psi, torch.as_tensor(order)).numpy()     # [n, f]
    truth = set(map(tuple, pairs.tolist()))
    for r in range(n):
        rows = slice(4 * r, 4 * r + 4)
        np.testing.assert_allclose(np.sort(c["distance"][rows]), np.sort(dist[r])[:4], atol=1e-5)
        np.testing.assert_allclose(c["distance"][rows], dist[r, c["fact"][rows]], atol=1e-5)
        assert list(c["is_true"][rows]) == [(ids[r], x) in truth for x in c["fact"][rows]]
        assert list(c["image"][rows]) == [ids[r]] * 4 and list(c["rank"][rows]) == [1, 2, 3, 4]
    assert is_true_pair(pairs, f, pairs[:, 0], pairs[:, 1]).all()


def test_weights_hash_survives_a_checkpoint_and_sees_a_change(tmp_path, tiny_model):
    m = tiny_model(double=False)
    torch.save({"model": m.state_dict()}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["model"]
    assert weights_sha256(back) == weights_sha256(m.state_dict())
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(back) != weights_sha256(m.state_dict())


def test_no_images_to_fit_on_is_a_clear_error():
    from factmas.evaluation.calibration_fit import fit_on_images
    with pytest.raises(CalibrationError, match="no val images"):
        fit_on_images(None, None, np.zeros(0, np.int64), k=5, target_precision=0.5)
