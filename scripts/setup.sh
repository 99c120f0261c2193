#!/usr/bin/env bash
# Create .venv and install ris with its test and SLURM extras (idempotent; ~1 min on a fresh machine).
# On Linux x86_64 with CPython 3.11 it installs exactly requirements-lock.txt (every package pinned and
# hash-checked, pip, setuptools and uv included) with the locked uv (pip took 307 s for it here, uv 42 s),
# then ris itself without dependencies; elsewhere the lock does not apply and it falls back to pip and the
# ranges of pyproject.toml, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
target=$(.venv/bin/python -c 'import platform, sys; print(platform.system(), platform.machine(), *sys.version_info[:2])')
if [ "$target" = "Linux x86_64 3 11" ]; then
  # bootstrap: the lock's own uv entry (version and hashes), installed by pip
  uv_req=$(mktemp)
  trap 'rm -f "$uv_req"' EXIT
  awk '/^uv==/ {p = 1; print; next} p && /^ +--hash=/ {print; next} {p = 0}' requirements-lock.txt > "$uv_req"
  .venv/bin/python -m pip install --quiet --require-hashes --no-deps -r "$uv_req"
  .venv/bin/uv pip install --quiet --python .venv/bin/python --require-hashes --compile-bytecode \
    -r requirements-lock.txt
  .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
else
  echo "setup.sh: requirements-lock.txt is for Linux x86_64 and CPython 3.11, not '$target':" \
    "installing from the version ranges of pyproject.toml instead (not reproducible)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,slurm]'
fi
echo "ris installed in .venv: activate with 'source .venv/bin/activate'"
