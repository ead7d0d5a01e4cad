"""scripts/gpu_check.sh without a GPU: one line on stderr, exit 2, nothing written, before any work."""
import os
import subprocess
import sys
from pathlib import Path

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
