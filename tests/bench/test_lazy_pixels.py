"""Smoke test of bench/lazy_pixels.py: it runs at its smallest size, both modes (pixels in memory,
lazy) in their own processes, and exits 0 only when both give the same metrics."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow           # two child processes that import torch (about 10 s)
def test_lazy_pixels_quick_gives_the_same_metrics_in_both_modes():
    done = subprocess.run([sys.executable, str(BENCH / "lazy_pixels.py"), "--quick"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "same metrics: True" in done.stdout
    assert "memory peak RSS" in done.stdout and "lazy   peak RSS" in done.stdout
