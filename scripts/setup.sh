#!/usr/bin/env bash
# Create .venv and install ris with its test and SLURM extras (idempotent; ~2-3 min on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,slurm]'
echo "ris installed in .venv: activate with 'source .venv/bin/activate'"
