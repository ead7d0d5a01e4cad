#!/usr/bin/env bash
# The GPU check of issue 32 (< 8 minutes on one GPU): the CUDA test subset (pytest -m cuda), the
# default model's feature cache, training step and exact Ω on the GPU (Ω against the CPU's), and one
# task trained with FAISS evaluation; results in bench/results/gpu_check.json (bench/gpu_check.py).
#
# usage: bash scripts/gpu_check.sh [bench/gpu_check.py options, e.g. --images 4000 --out FILE]
#   FACTMAS_VENV (default .venv) is the environment (scripts/setup_env.sh makes it).
# Without a CUDA GPU it prints one line and exits 2 before any work.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${FACTMAS_VENV:-$root/.venv}/bin/python"
[ -x "$py" ] || { echo "gpu_check: no Python environment at $py (run scripts/setup_env.sh or set FACTMAS_VENV)" >&2; exit 2; }
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 470 "$py" "$root/bench/gpu_check.py" "$@"
