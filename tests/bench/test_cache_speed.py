"""bench/cache_speed.py and bench/flops.py at --quick sizes: each runs against the current API and
records the machine, the forms compared and their agreement with the base path."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow              # about 30 s: a jit trace and an ONNX export of the frozen stages
def test_cache_speed_quick_compares_forms_with_the_base(tmp_path):
    out = tmp_path / "cache_speed.json"
    done = subprocess.run([sys.executable, str(BENCH / "cache_speed.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    forms = {r["form"]: r for r in result["results"]}
    assert forms["eager NCHW b8"]["vs_base"] == 1.0 and forms["eager NCHW b8"]["max_diff_over_tol"] == 0
    assert all(r["equal"] for r in forms.values()), forms         # every form: the same features
    assert result["machine"]["cpu"] and result["gflop_per_image"] > 0


def test_flops_quick_writes_the_three_stages(tmp_path):
    out = tmp_path / "flops.json"
    done = subprocess.run([sys.executable, str(BENCH / "flops.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["stage"].split(" (")[0]: r for r in json.loads(out.read_text())["results"]}
    assert {"train step", "exact Ω, image branch", "cache forward"} <= set(rows)
    for r in rows.values():
        assert r["gflop_per_image"] == pytest.approx(r["hooks_gflop_per_image"], rel=0.05)
    assert rows["train step"]["torch_overcount"] > 1.5          # depthwise weight gradients, ×groups
