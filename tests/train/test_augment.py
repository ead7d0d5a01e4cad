"""Training-time augmentation: flips and shifts against a naive per-pixel reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factmas.trainer.augment import augment_images


def _reference(x: np.ndarray, flip: bool, dy: int, dx: int, s: int) -> np.ndarray:
    img = x[:, :, ::-1] if flip else x
    padded = np.pad(img, ((0, 0), (s, s), (s, s)), mode="reflect")
    h, w = x.shape[1:]
    return padded[:, s + dy:s + dy + h, s + dx:s + dx + w]


def test_augment_matches_reference_and_is_seeded():
    x = torch.randn(6, 3, 10, 12)
    before = x.clone()
    out = augment_images(x, np.random.default_rng(5), max_shift=3)
    rng = np.random.default_rng(5)
    flips, shifts = rng.random(6) < 0.5, rng.integers(-3, 4, size=(6, 2))
    for i in range(6):
        ref = _reference(x[i].numpy(), flips[i], *shifts[i], 3)
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=0, atol=0)
    again = augment_images(x, np.random.default_rng(5), max_shift=3)
    assert torch.equal(out, again)
    assert not torch.equal(out, x)          # something changed
    assert torch.equal(x, before)           # input untouched


def test_augment_off_is_identity_and_bad_shift_errors():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(augment_images(x, np.random.default_rng(0), max_shift=0, flip=False), x)
    with pytest.raises(ValueError, match="max_shift"):
        augment_images(x, np.random.default_rng(0), max_shift=8)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        augment_images(x[0], np.random.default_rng(0))
