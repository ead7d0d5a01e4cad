"""The small compiled helpers of factmas.evaluation.count_kernel against naive loops: the window
search both column kernels share, the window-hit cells of phase A, the float64 pair dots that
centre the column windows. (The counting kernels themselves: tests/evaluation/test_ranking.py.)"""
import numpy as np
import pytest

from factmas.evaluation import count_kernel

pytestmark = pytest.mark.skipif(not count_kernel.AVAILABLE, reason="needs numba")


@pytest.mark.parametrize("width", [0.0, 0.05, 0.5])
def test_windows_search_equals_brute_force(rng, width):
    """(m, e): windows a..m−1 lie below x (top < x), windows m..e−1 hold x (bottom ≤ x ≤ top),
    for windows sorted by top with one width (so also by bottom), duplicates and exact hits
    included; the same as the plain-Python helper."""
    for _ in range(200):
        k = int(rng.integers(1, 12))
        top = np.sort(rng.choice(np.linspace(-1, 1, 9), k)).astype(np.float32)   # ties of tops
        lo = (top - np.float32(width)).astype(np.float32)
        a = int(rng.integers(0, k))
        b = int(rng.integers(a, k + 1))
        x = np.float32(rng.choice(np.r_[top, lo, rng.uniform(-1.6, 1.2, 3)]))
        m, e = count_kernel._windows(top, lo, a, b, x)
        assert (m, e) == count_kernel._windows_py(top, lo, a, b, x)
        assert m - a == int((top[a:b] < x).sum())
        holding = [j for j in range(a, b) if lo[j] <= x <= top[j]]
        assert list(range(m, e)) == holding


def test_hit_cells_equals_naive(rng):
    """The cells with a window hit besides the pairs' own entries, each one's hits and their sum (own
    ones included), and ``win`` left all zero."""
    for _ in range(50):
        size = int(rng.integers(1, 300))
        own = rng.integers(0, size, int(rng.integers(0, 40)))            # repeated cells too
        flat = np.bincount(own, minlength=size).astype(np.int32)          # each own entry: a hit
        extra = rng.random(size) < 0.1
        flat[extra] += rng.integers(1, 4, int(extra.sum())).astype(np.int32)
        raw = flat.copy()
        own_n = np.bincount(own, minlength=size)
        want = np.flatnonzero(raw > own_n)
        cells = np.full(size, -7, np.int64)
        cell_n = np.full(size, -7, np.int64)
        k, total = count_kernel._hit_cells_jit(flat, own.astype(np.int64), cells, cell_n)
        np.testing.assert_array_equal(cells[:k], want)
        np.testing.assert_array_equal(cell_n[:k], raw[want])
        assert total == int(raw[want].sum())
        assert not flat.any()


def test_pair_dots_equal_an_in_order_float64_loop(rng):
    a = rng.standard_normal((30, 3, 7)).astype(np.float32)
    b = rng.standard_normal((20, 3, 7)).astype(np.float32)
    ia, ib = rng.integers(0, 30, 40), rng.integers(0, 20, 40)
    for o in (1, 2, 3):
        length = 7 * o
        got = count_kernel.pair_dots(a, b, ia, ib, length)
        want = np.zeros(len(ia))
        for t in range(len(ia)):
            s = 0.0
            for k in range(length):
                s += float(a[ia[t]].reshape(-1)[k]) * float(b[ib[t]].reshape(-1)[k])
            want[t] = s
        np.testing.assert_array_equal(got, want)
        flat = np.einsum("ij,ij->i", a.reshape(30, -1)[ia, :length].astype(np.float64),
                         b.reshape(20, -1)[ib, :length].astype(np.float64))
        np.testing.assert_allclose(got, flat, rtol=1e-13, atol=1e-13)


def test_pair_dots_refuse_bad_input(rng):
    a = np.zeros((3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="length"):
        count_kernel.pair_dots(a, a, [0], [1], 13)
    with pytest.raises(ValueError, match="row indexes"):
        count_kernel.pair_dots(a, a, [0, 1], [1], 4)
