"""scripts/gpu_check.sh without a GPU: one line on stderr, exit 2, nothing written, before any work;
and bench/gpu_check.py's code path end to end on the CPU (--device cpu --quick)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_refuses_clearly_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FACTMAS_VENV": str(Path(sys.executable).parents[1])}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == "" and not out.exists()


def test_gpu_check_names_a_missing_environment(tmp_path):
    env = {**os.environ, "FACTMAS_VENV": str(tmp_path / "nowhere")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 2 and "no Python environment" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow          # about 35 s: the whole check's code path on the CPU at tiny sizes
def test_gpu_check_dry_run_on_the_cpu_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu",
                           "--quick", "--skip", "tests", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert set(sections) == {"cache", "train_step", "omega", "task"} and not result["failed_sections"]
    assert sections["cache"]["vs_cpu_max_diff_over_tol"] <= 1.0
    assert sections["omega"]["max_rel_err"] < 1e-4 and sections["task"]["completed_tasks"] == [0]
    assert result["machine"]["cpu"] and "faiss_gpus" in result["gpu"]
