#!/usr/bin/env bash
# The README's test command: create the environment, then run the whole test suite.
# FACTMAS_FLICKR8K=<folder with images/ and captions.txt> enables the end-to-end test on real data
# (required when CI=true).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec "${FACTMAS_VENV:-$root/.venv}/bin/python" -m pytest "$@"
