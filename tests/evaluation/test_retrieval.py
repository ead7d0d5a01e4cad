"""FAISS wildcard search against a brute-force torch top-k over factmas.space.wildcard_distance."""
import builtins

import numpy as np
import pytest
import torch

from factmas.evaluation import retrieval
from factmas.space import wildcard_distance


def _embeddings(n_img=37, n_fact=53, d=8):
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 31)))
    phi = torch.randn(n_img, 3, d, generator=g) * 3
    psi = torch.randn(n_fact, 3, d, generator=g)
    order = torch.randint(1, 4, (n_fact,), generator=g)
    order[:3] = torch.tensor([1, 2, 3])                      # every order present
    psi[torch.arange(3)[None, :] >= order[:, None]] = 0.0    # absent slots are zeros, as the model gives
    return phi, psi, order


def _assert_same_topk(dist, i, d, ref_i, ref_d):
    """FAISS's top-k equals brute force: the same items wherever the brute-force distances are apart
    by more than float32 rounding (two computations of the same distance may swap near-ties, which
    fresh random data does produce), distinct items, and their brute-force distances in order."""
    i_t = torch.as_tensor(np.asarray(i, np.int64))
    assert all(len(set(row)) == len(row) for row in np.asarray(i).tolist())
    np.testing.assert_allclose(dist.gather(1, i_t).numpy(), ref_d.numpy(), atol=1e-5)
    np.testing.assert_allclose(d, ref_d.numpy(), atol=1e-5)
    k = ref_d.shape[1]
    ext = torch.topk(dist, min(k + 1, dist.shape[1]), dim=1, largest=False).values   # one beyond k
    gaps = torch.diff(ext, dim=1).abs() > 1e-5
    apart = torch.ones_like(ref_d, dtype=torch.bool)
    apart[:, 1:] &= gaps[:, :k - 1]
    apart[:, :min(k, gaps.shape[1])] &= gaps[:, :min(k, gaps.shape[1])]
    np.testing.assert_array_equal(np.asarray(i)[apart.numpy()], ref_i.numpy()[apart.numpy()])


@pytest.mark.parametrize("k,batch", [(1, 4096), (5, 7), (53, 10)])
def test_fact_index_topk_equals_brute_force(k, batch):
    phi, psi, order = _embeddings()
    dist = wildcard_distance(phi, psi, order)                # [N, M]
    ref_d, ref_i = torch.topk(dist, k, dim=1, largest=False)
    d, i = retrieval.FactIndex(psi, order, gpu=False).search(phi, k, batch=batch)
    assert d.shape == i.shape == (len(phi), k)
    _assert_same_topk(dist, i, d, ref_i, ref_d)


def test_fact_index_k_beyond_facts_is_clipped():
    phi, psi, order = _embeddings(n_img=4, n_fact=6)
    d, i = retrieval.FactIndex(psi, order, gpu=False).search(phi, 100)
    assert i.shape == (4, 6)
    assert (np.sort(i, axis=1) == np.arange(6)).all()        # every fact exactly once


@pytest.mark.parametrize("k,batch", [(1, 4096), (9, 5), (37, 4096)])
def test_image_index_topk_equals_brute_force(k, batch):
    phi, psi, order = _embeddings()
    dist = wildcard_distance(phi, psi, order).T              # [M, N]
    ref_d, ref_i = torch.topk(dist, k, dim=1, largest=False)
    d, i = retrieval.ImageIndex(phi, gpu=False).search(psi, order, k, batch=batch)
    _assert_same_topk(dist, i, d, ref_i, ref_d)


def test_search_batches_bound_rows_per_call(monkeypatch):
    phi, psi, order = _embeddings(n_img=30, n_fact=12)
    monkeypatch.setattr(retrieval, "MAX_RESULTS", 8 * 12)    # at most 8 queries × k=12 entries
    sizes = [len(d) for _, d, _ in retrieval.ImageIndex(phi, gpu=False).search_batches(
        psi, order, k=12, batch=100)]
    assert max(sizes) <= 8 and sum(sizes) == 12


def test_bad_input_errors():
    phi, psi, order = _embeddings(n_img=4, n_fact=5)
    with pytest.raises(ValueError, match=r"\[N, 3, d\]"):
        retrieval.FactIndex(psi[:, :2], order)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        retrieval.FactIndex(psi, order * 0)
    with pytest.raises(ValueError, match="batch"):
        retrieval.FactIndex(psi, order, gpu=False).search(phi, 2, batch=0)


def test_missing_faiss_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"factmas\[cpu\].*factmas\[gpu\]"):
        retrieval.require_faiss()
