"""Smoke test of the benchmark scripts (bench/): each runs at its smallest size and writes its JSON.

Not a timed test: the figures are not checked, only that every script still runs against the
current factmas API and records what docs/benchmarks.md needs (machine info, results rows).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = ("train_overhead", "omega", "eval_scaling", "data_loading", "memory")


@pytest.mark.slow           # the slowest test of the suite (about 9 s): five scripts in subprocesses
def test_every_benchmark_runs_quick_and_writes_json(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in SCRIPTS:
        out = json.loads((tmp_path / f"{name}.json").read_text())
        assert out["benchmark"] == name and out["quick"] is True
        machine = out["machine"]
        for key in ("cpu_count", "torch", "torch_threads", "loadavg_1_5_15", "date_utc"):
            assert key in machine, (name, key)
        assert out["results"], name
        assert not any("error" in r for r in out["results"]
                       if not (r.get("estimator") == "vmap" and r.get("branch") == "fact")), name
    from factmas.methods import METHODS
    memory = json.loads((tmp_path / "memory.json").read_text())
    assert {r["method"] for r in memory["results"]} == set(METHODS)
    omega = {(r["branch"], r["estimator"]): r for r in json.loads(
        (tmp_path / "omega.json").read_text())["results"]}
    assert omega[("image", "exact (hooks)")]["max_rel_err"] < 1e-4
    assert json.loads((tmp_path / "run_all.json").read_text())["total_s"] > 0


def test_eval_exact_runs_quick_and_matches_the_old_path(tmp_path):
    """bench/eval_exact.py (not in run_all: minutes at its default sizes) at its smoke size."""
    out = tmp_path / "eval_exact.json"
    done = subprocess.run([sys.executable, str(BENCH / "eval_exact.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "eval_exact" and res["quick"] is True and res["results"]
    for row in res["results"]:
        assert row["floor_s"] > 0 and row["new_s"] > 0 and row["old_s"] > 0
        assert row["old_max_abs_ap_diff_f2i"] < 1e-4


@pytest.mark.slow           # four fresh Python processes (about 15 s idle)
def test_cpu_memory_runs_one_quick_case_and_writes_json(tmp_path):
    out = tmp_path / "cpu_memory.json"
    done = subprocess.run([sys.executable, str(BENCH / "cpu_memory.py"), "--quick",
                           "--cases", "cache:32:5:2", "train:32:5:4", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["what"], r["px"], r["batch"]) for r in rows] == [("cache", 32, 2), ("train", 32, 4)]
    assert all(r["default_images_per_s"] > 0 and r["keep_images_per_s"] > 0 for r in rows)
    bad = subprocess.run([sys.executable, str(BENCH / "cpu_memory.py"), "--cases", "cache:x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "WHAT:PX:FROZEN:BATCH" in bad.stderr


def test_omega_scale_runs_on_a_trained_run_and_refuses_a_missing_one(tmp_path):
    """bench/omega_scale.py (not in run_all) on a one-task small_cnn run of synthetic data."""
    from factmas.config import RunConfig
    from factmas.data.synthetic import make_synthetic_dataset
    from factmas.trainer import train
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=60, image_size=16, num_tasks=2)
    cfg = RunConfig.from_dict({
        "data": str(data), "out": str(tmp_path / "run"),
        "model": {"backbone": "small_cnn", "width": 8, "embed_dim": 16, "word_dim": 16,
                  "fact_hidden": 32, "norm_groups": 4},
        "train": {"split": "random2_seed0", "method": "mas", "epochs": 1, "batch_size": 32},
        "eval": {"enabled": False}})
    train(cfg, progress=False, limit_tasks=1)
    done = subprocess.run([sys.executable, str(BENCH / "omega_scale.py"), str(tmp_path / "run"),
                           "--images", "20", "--facts", "10"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ratios = [float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines() if "raw ÷ normalized" in line]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    bad = subprocess.run([sys.executable, str(BENCH / "omega_scale.py"), str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "omega_scale:" in bad.stderr
