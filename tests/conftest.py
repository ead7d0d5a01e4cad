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
