"""``factmas.data.loader.batch_loader``: the batches of the keys in the keys' order, whether fetched here
or by DataLoader workers that finish out of order; a worker's error reaches the caller; bad settings
are refused."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from factmas.data.loader import batch_loader, chunked


def _slow_square(key):
    """Batches finish out of order in 2 workers: early keys sleep longer."""
    ids, tag = key
    time.sleep(0.02 * (ids[0] % 3 == 0))
    return torch.from_numpy(np.asarray(ids, np.int64) ** 2), tag, os.getpid()


def _fails_on_three(key):
    if key == 3:
        raise ValueError("row 3 is unreadable")
    return key


def test_workers_yield_the_batches_of_the_keys_in_order(rng):
    ids = rng.permutation(60)
    keys = [(part, f"b{i}") for i, part in enumerate(chunked(ids, 7))]
    here = list(batch_loader(_slow_square, keys, num_workers=0))
    there = list(batch_loader(_slow_square, keys, num_workers=2))
    assert len(here) == len(there) == len(keys) == 9
    for (x0, t0, pid0), (x2, t2, pid2), (part, tag) in zip(here, there, keys):
        assert torch.equal(x0, x2) and torch.equal(x0, torch.from_numpy(part.astype(np.int64) ** 2))
        assert t0 == t2 == tag
        assert pid0 == os.getpid()
    assert {pid for _, _, pid in there} - {os.getpid()}, "no batch came from a worker process"
    assert [p for _, _, p in there if p == os.getpid()] == []


def test_no_workers_is_a_lazy_generator():
    calls = []
    it = batch_loader(lambda k: calls.append(k) or k, [1, 2, 3], num_workers=0)
    assert calls == []
    assert next(it) == 1 and calls == [1]


def test_empty_keys_give_no_batch():
    assert list(batch_loader(_fails_on_three, [], num_workers=2)) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_a_fetch_error_reaches_the_caller_with_its_message(workers):
    with pytest.raises(ValueError, match="row 3 is unreadable"):
        list(batch_loader(_fails_on_three, [1, 2, 3, 4], num_workers=workers))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused(bad):
    with pytest.raises(ValueError, match="num_workers"):
        batch_loader(_fails_on_three, [1], num_workers=bad)


def test_bad_prefetch_is_refused():
    with pytest.raises(ValueError, match="prefetch_factor"):
        batch_loader(_fails_on_three, [1], num_workers=1, prefetch_factor=0)
