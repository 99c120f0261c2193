#!/usr/bin/env bash
# Create .venv and install ris with its test and SLURM extras (idempotent; ~4 min on a fresh machine).
# On Linux x86_64 with CPython 3.11 it installs exactly requirements-lock.txt (every package pinned and
# hash-checked, pip and setuptools included), then ris itself without dependencies; elsewhere the lock
# does not apply and it falls back to the ranges of pyproject.toml, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
target=$(.venv/bin/python -c 'import platform, sys; print(platform.system(), platform.machine(), *sys.version_info[:2])')
if [ "$target" = "Linux x86_64 3 11" ]; then
  .venv/bin/python -m pip install --quiet --require-hashes -r requirements-lock.txt
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
else
  echo "setup.sh: requirements-lock.txt is for Linux x86_64 and CPython 3.11, not '$target':" \
    "installing from the version ranges of pyproject.toml instead (not reproducible)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,slurm]'
fi
echo "ris installed in .venv: activate with 'source .venv/bin/activate'"
