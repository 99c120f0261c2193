#!/usr/bin/env bash
# Regenerate requirements-lock.txt (every package of the environment pinned, with sha256 hashes) from
# pyproject.toml (+ test, slurm extras) and requirements-lock.in, then mirror its pins into environment.yml.
# Target: Linux x86_64 (manylinux_2_28), CPython 3.11. Versions already in the lock are kept; extra
# arguments go to `uv pip compile`, e.g. `bash scripts/lock.sh --upgrade-package timm` or `--upgrade`.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9   # the resolver is pinned too: another uv may order or annotate the lock differently
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/uv"
"$tmp/uv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
"$tmp/uv/bin/uv" pip compile pyproject.toml requirements-lock.in --extra test --extra slurm \
  --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "bash scripts/lock.sh" --cache-dir "$tmp/cache" --quiet \
  --output-file requirements-lock.txt "$@"
sed -i '1{/^# Locked environment/d}' requirements-lock.txt   # the header line below, from the previous run
sed -i '1i # Locked environment of ris for Linux x86_64 (manylinux_2_28) and CPython 3.11; see scripts/lock.sh.' \
  requirements-lock.txt
"$PY" -m ris.lock   # environment.yml: the same pins (stdlib only, no venv needed)
