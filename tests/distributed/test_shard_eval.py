"""Sharded evaluation (``Evaluator.evaluate_sharded``, factmas.evaluation.shard_eval): 2 gloo processes,
each scoring its share of the pool images against every fact, give every metric of the one-process
evaluator (``evaluate_embeddings``) on the same embeddings exactly — both directions, per task and
"all", LFL's metric in both modes, the counts — on embeddings with many exact ties (quantized) and on
continuous ones; the embedding's mean cosine (float64 sums in another order) within 1e-12.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation import count_kernel
from factmas.evaluation.evaluator import Evaluator

from test_distributed import ABORT, run, torchrun  # noqa: E402 (the launch helpers of this folder)

pytestmark = pytest.mark.skipif(not count_kernel.AVAILABLE, reason="sharded counting needs numba")
WORKER = __import__("pathlib").Path(__file__).resolve().parent / "shard_eval_worker.py"
SPLIT = "random3_seed0"
SEARCH_BATCH = 7                        # blocks of 7 rows: shares and blocks do not line up


def embeddings(ev: Evaluator, seed: int, ties: bool, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """phi float32 [N_pool, 3, d], psi float32 [F, 3, d] (zero beyond each fact's order); with
    ``ties`` entries in {−1, 0, 1}: many exactly equal distances, across the two shares too."""
    rng = np.random.default_rng(seed)
    n, f = len(ev.image_ids), ev.data.num_facts
    if ties:
        phi = rng.integers(-1, 2, (n, 3, d)).astype(np.float32)
        psi = rng.integers(-1, 2, (f, 3, d)).astype(np.float32)
        phi[rng.random(n) < 0.1] = 0.0                             # zero images: all tied at −2
    else:
        phi = rng.standard_normal((n, 3, d)).astype(np.float32)
        psi = rng.standard_normal((f, 3, d)).astype(np.float32)
    psi[np.arange(3)[None, :] >= ev.data.order[:, None]] = 0.0
    return phi, psi


def compare(one: dict, two: dict) -> int:
    """Asserts every metric equal (NaN = NaN), the mean cosine within 1e-12; returns how many."""
    n = 0
    for name, v in one.items():
        if name in ("timing",):
            continue
        if name == "embedding":
            assert two[name]["mean_cosine"] == pytest.approx(v["mean_cosine"], abs=1e-12)
            continue
        assert set(two[name]) == set(v), name
        for key, x in v.items():
            y = two[name][key]
            if isinstance(x, dict):
                assert x == y, (name, key)
                n += len(x)
            else:
                assert (x == y) or (math.isnan(x) and math.isnan(y)), (name, key, x, y)
                n += 1
    return n


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("se") / "s.h5", n_images=400, image_size=8,
                                  num_tasks=3, seed=3)


def test_sharded_in_one_process_equals_evaluate_embeddings(data_path):
    """One process: ``evaluate_sharded`` of the whole pool (lo = 0) is ``evaluate_embeddings``; a
    share other than this rank's is refused."""
    ev = Evaluator(read_dataset(data_path), SPLIT, EvalConfig(search_batch=SEARCH_BATCH))
    phi, psi = (torch.from_numpy(a) for a in embeddings(ev, 1, True))
    one = ev.evaluate_embeddings(phi, psi)
    got = ev.evaluate_sharded(phi, psi, 0)
    assert compare(one, got) > 50
    assert got["embedding"]["mean_cosine"] == one["embedding"]["mean_cosine"]
    with pytest.raises(ValueError, match="this rank's share is 0 .. "):
        ev.evaluate_sharded(phi[3:], psi, 3)


@pytest.mark.parametrize("ties", [True, False])
def test_two_gloo_processes_equal_one(tmp_path, data_path, ties):
    data = read_dataset(data_path)
    ev = Evaluator(data, SPLIT, EvalConfig(search_batch=SEARCH_BATCH))
    phi, psi = embeddings(ev, 2, ties)
    emb = tmp_path / "emb.npz"
    np.savez(emb, phi=phi, psi=psi)
    out = tmp_path / "two.json"
    cmd = torchrun(str(WORKER), str(data_path), SPLIT, str(emb), str(out),
                   "--search-batch", str(SEARCH_BATCH))
    p = run(cmd)
    if p.returncode != 0 and ABORT in p.stdout + p.stderr:     # see test_distributed.setup
        p = run(cmd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["world"] == 2
    one = json.loads(json.dumps(ev.evaluate_embeddings(torch.from_numpy(phi), torch.from_numpy(psi))))
    n = compare(one, two)
    assert n > 50
    assert 0 < one["fact_to_image_map"]["all"] < 1 and one["lfl_counts"]["pairs"]["all"] > 0
    if ties:                                   # the ties are real: equal −D within one fact's column
        from factmas.evaluation.retrieval import unit_slots
        ph, ps = unit_slots(torch.from_numpy(phi)), unit_slots(torch.from_numpy(psi))
        col = (ph[:, :1] * ps[0, :1]).sum((1, 2))
        assert len(np.unique(col)) < len(col) // 2


@pytest.mark.slow                      # two torchrun launches of the benchmark at its smoke size
def test_bench_shard_eval_runs_quick(tmp_path):
    """bench/shard_eval.py --quick: 1 and 2 processes, equal metrics, a speed-up recorded."""
    import sys
    bench = WORKER.parents[2] / "bench" / "shard_eval.py"
    out = tmp_path / "shard_eval.json"
    p = run([sys.executable, str(bench), "--quick", "--out", str(out)], timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "shard_eval" and res["quick"] is True
    assert res["metrics_equal"] is True and res["sharded_counts"] is True
    assert res["speedup_2_over_1"] > 0 and "cpu" in res["machine"]
