"""Sharded evaluation past the column counter's memory budget (issue 28): 2 gloo processes with
``column_ranks.WINDOW_BUDGET`` = 0 (every rank stops at its first window entry and counts fact → image
in a second pass against the merged exact values, ``factmas.evaluation.column_exact``) give every
metric of the one-process, unbudgeted evaluation, on crowded scores (nearly collapsed embeddings)
and on exact ties (zero images)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factmas.config import EvalConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.evaluation import count_kernel
from factmas.evaluation.evaluator import Evaluator

from test_distributed import ABORT, run, torchrun  # noqa: E402 (the launch helpers of this folder)
from test_shard_eval import WORKER, compare  # noqa: E402

pytestmark = pytest.mark.skipif(not count_kernel.AVAILABLE, reason="sharded counting needs numba")
SPLIT = "random3_seed0"
SEARCH_BATCH = 7


@pytest.mark.parametrize("kind", ["collapsed", "ties"])
def test_two_gloo_processes_past_the_budget_equal_one(tmp_path, kind, products_depend_on_position):
    if kind == "collapsed" and products_depend_on_position:
        pytest.skip("collapsed embeddings need float32 products that do not depend on the entry's "
                    "position (tests/conftest.py); this machine's BLAS changes them by 1 ulp, which "
                    "reorders images 1e-6 apart")
    path = make_synthetic_dataset(tmp_path / "s.h5", n_images=400, image_size=8, num_tasks=3, seed=4)
    ev = Evaluator(read_dataset(path), SPLIT, EvalConfig(search_batch=SEARCH_BATCH))
    rng = np.random.default_rng(21)
    n, f, d = len(ev.image_ids), ev.data.num_facts, 6
    psi = rng.standard_normal((f, 3, d)).astype(np.float32)
    if kind == "collapsed":        # mean cosine ≈ 1: every image inside every pair's window
        phi = (rng.standard_normal((1, 3, d)) + 1e-6 * rng.standard_normal((n, 3, d))).astype(np.float32)
    else:                          # zero images: −D = −2 for every fact, exact ties across ranks
        phi = rng.standard_normal((n, 3, d)).astype(np.float32)
        phi[rng.random(n) < 0.3] = 0.0
    psi[np.arange(3)[None, :] >= ev.data.order[:, None]] = 0.0
    emb = tmp_path / "emb.npz"
    np.savez(emb, phi=phi, psi=psi)
    out = tmp_path / "two.json"
    cmd = torchrun(str(WORKER), str(path), SPLIT, str(emb), str(out),
                   "--search-batch", str(SEARCH_BATCH), "--window-budget", "0")
    p = run(cmd)
    if p.returncode != 0 and ABORT in p.stdout + p.stderr:
        p = run(cmd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "counted in a second pass" in p.stderr                 # the budget path was taken
    two = json.loads(out.read_text())
    assert two["world"] == 2
    one = json.loads(json.dumps(ev.evaluate_embeddings(torch.from_numpy(phi), torch.from_numpy(psi))))
    assert compare(one, two) > 50
    assert 0 < one["fact_to_image_map"]["all"] < 1
