"""bench/trainable_depth.py runs and writes its rows (smoke sizes; the figures are in its JSON)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_trainable_depth_quick(tmp_path):
    out = tmp_path / "depth.json"
    done = subprocess.run([sys.executable, str(BENCH / "trainable_depth.py"), "--quick", "--frozen", "6,4",
                           "--sizes", "64", "--candidates", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["input_px"], r["freeze_stages"]) for r in rows] == [(64, 6), (64, 4)]
    # freezing fewer stages trains more parameters and caches an earlier, larger feature map
    assert rows[1]["trainable_params"] > rows[0]["trainable_params"]
    assert rows[1]["cache_bytes_per_image"] > rows[0]["cache_bytes_per_image"]
    assert all(r["train_images_per_s"] > 0 and r["speed_vs_frozen6"] > 0 for r in rows)
    assert rows[0]["speed_vs_frozen6"] == 1.0
