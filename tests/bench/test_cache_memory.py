"""bench/cache_memory.py (issue 28: peak RSS of building and reading the feature cache) at a smoke size:
it runs against the current factmas, writes its JSON, and the memory-mapped build holds less than the
cache it writes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow           # two fresh Python processes (about 10 s idle)
def test_cache_memory_runs_small_and_writes_json(tmp_path):
    out = tmp_path / "cache_memory.json"
    done = subprocess.run([sys.executable, str(BENCH / "cache_memory.py"), "--images", "600", "--size", "64",
                           "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = {(r["tree"], r["stage"]): r for r in res["rows"]}
    assert set(rows) == {("after", "build"), ("after", "read")}
    assert res["cache_mib"] > 30 and res["machine"]["cpu"]
    assert rows[("after", "build")]["anon_rise_mib"] < res["cache_mib"] / 2   # not held whole
    assert rows[("after", "read")]["epoch_s"] > 0
