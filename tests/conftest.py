"""Fixtures shared by the tests.

- ``tiny_model``: a factory ``tiny_model(backbone="small_cnn", seed=0, double=True)`` → a small
  ``TwoBranchModel`` (width 8, d = 8, vocabulary ``TINY_VOCAB``), float64 unless ``double=False``.
- Every test starts from seeded random generators (torch, numpy's global one, ``random``): the seed is
  ``FACTMAS_TEST_SEED`` (default 0) and is printed, so a failing test's captured output names it.
- ``rng``: a ``numpy.random.Generator`` from that seed, for tests that draw their own data.
"""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from factmas.config import ModelConfig
from factmas.model import build_model

TINY_VOCAB = 20


def make_tiny_model(backbone: str = "small_cnn", seed: int = 0, double: bool = True,
                    vocab_size: int = TINY_VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone, width=8, embed_dim=8, word_dim=8, fact_hidden=16)
    model = build_model(cfg, vocab_size=vocab_size)
    return model.double() if double else model


@pytest.fixture
def tiny_model():
    """The factory ``make_tiny_model`` (module docstring)."""
    return make_tiny_model


@pytest.fixture(autouse=True)
def test_seed(request) -> int:
    """Seeds torch, numpy and ``random`` before every test and prints the seed."""
    seed = int(os.environ.get("FACTMAS_TEST_SEED", "0"))
    print(f"{request.node.nodeid}: random seed {seed} (set FACTMAS_TEST_SEED to change it)")
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


@pytest.fixture
def rng(test_seed: int) -> np.random.Generator:
    """A numpy Generator from the test's printed seed."""
    return np.random.default_rng(test_seed)


def assert_same_h5(a, b, ignore_provenance: tuple = ()) -> int:
    """Every dataset of HDF5 files ``a`` and ``b`` equal (dtype, shape, chunking, values, attributes;
    variable-length rows compared row by row) and the same file attributes, the JSON ``provenance``
    compared without its keys ``ignore_provenance`` (timings). Returns the number of datasets."""
    import json

    import h5py

    def datasets(h):
        out = {}
        h.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
        return out

    with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
        da, db = datasets(ha), datasets(hb)
        assert sorted(da) == sorted(db)
        for key, x in da.items():
            y = db[key]
            assert (x.dtype, x.shape, x.chunks) == (y.dtype, y.shape, y.chunks), key
            vx, vy = x[()], y[()]
            if x.dtype.kind == "O" and h5py.check_vlen_dtype(x.dtype) is not None:
                assert all(np.array_equal(p, q) for p, q in zip(vx, vy)), key
            else:
                assert np.array_equal(vx, vy), key
            assert dict(x.attrs) == dict(y.attrs), key
        attrs_a, attrs_b = dict(ha.attrs), dict(hb.attrs)
        prov_a, prov_b = (json.loads(d.pop("provenance", "{}")) for d in (attrs_a, attrs_b))
        assert attrs_a == attrs_b
        for k in ignore_provenance:
            prov_a.pop(k, None), prov_b.pop(k, None)
        assert prov_a == prov_b
        return len(da)


@pytest.fixture
def same_h5():
    """``assert_same_h5``: two HDF5 dataset files hold the same datasets and attributes."""
    return assert_same_h5


@pytest.fixture(scope="session")
def products_depend_on_position() -> bool:
    """Whether this machine's torch float32 matrix product gives an entry a value that depends on
    where the entry sits (its column among the others, the number of rows): seen with MKL's AVX2
    path on an AMD EPYC (a part of 6, 7, 9, 10 or 11 columns differs by 1 ulp from the same
    columns permuted), not on the Intel Xeon of the earlier sessions. Tests that need bit-equal
    scores from two differently cut score matrices (collapsed embeddings, where 1 ulp reorders
    images) hold only where this is False. A fixed probe, one thread, once per session."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = np.random.default_rng(0)
        found = False
        for k in (6, 8, 12, 16, 18, 24):
            for n in range(1, 33):
                q = torch.from_numpy(g.standard_normal((160, k)).astype(np.float32))
                m = torch.from_numpy(g.standard_normal((n, k)).astype(np.float32))
                p = g.permutation(n)
                full = torch.mm(q, m.T)
                found |= bool((full != torch.mm(q, m[p].T)[:, np.argsort(p)]).any())
                found |= bool((full[7:] != torch.mm(q[7:], m.T)).any())
    finally:
        torch.set_num_threads(old)
    return found
