"""The locked environment: ``requirements-lock.txt`` read back, hashed, and mirrored into ``environment.yml``.

``requirements-lock.txt`` (written by ``bash scripts/lock.sh`` with ``uv pip compile --generate-hashes``)
pins every package of the environment, with sha256 hashes, for Linux x86_64 and CPython 3.11;
``scripts/setup.sh`` installs exactly it. ``pyproject.toml`` keeps the loose ranges for library users.
This module is stdlib-only, so ``scripts/lock.sh`` can run it before any virtual environment exists.

* :func:`read_lock`: package name -> pinned version (what the tests compare with ``pip freeze``);
* :func:`lock_sha256`: the lock file's hash (an MLflow tag of every run: which environment made it);
* :func:`write_environment_yml`: rewrite the ``pip:`` pins of ``environment.yml`` from the lock.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

from ris.utils import atomic_path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = REPO_ROOT / "requirements-lock.txt"
ENVIRONMENT_FILE = REPO_ROOT / "environment.yml"
# Installed by conda itself in environment.yml (its `pip` dependency), not by the pip section.
CONDA_OWNED = ("pip", "setuptools")
PINS_BEGIN = "      # BEGIN pins generated from requirements-lock.txt by `bash scripts/lock.sh`; do not edit"
PINS_END = "      # END pins"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 normalized project name (``Foo_Bar`` -> ``foo-bar``), for comparing names across tools."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """Normalized name -> pinned version of every package in a hashed requirements lock.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a requirement that is not an
    exact ``==`` pin or has no ``--hash`` (pip's ``--require-hashes`` would refuse it at install time).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: lock file not found (regenerate it with `bash scripts/lock.sh`)")
    pins: dict[str, str] = {}
    # A requirement spans its line and the `\`-continued `--hash` lines after it.
    for entry in re.split(r"\n(?=\S)", path.read_text()):
        first = entry.split("\n", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        m = _PIN.match(first)
        if not m:
            raise ValueError(f"{path}: {first!r} is not an exact pin (name==version)")
        if "--hash=sha256:" not in entry:
            raise ValueError(f"{path}: {m.group(1)}=={m.group(3)} has no --hash (pip --require-hashes refuses it)")
        pins[normalize(m.group(1))] = m.group(3)
    if not pins:
        raise ValueError(f"{path}: no pinned requirement found")
    return pins


def lock_sha256(path: Path = LOCK_FILE) -> str | None:
    """sha256 of the lock file's bytes, or None when the package runs outside its checkout (no lock)."""
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def environment_pins(pins: dict[str, str]) -> list[str]:
    """The ``pip:`` lines of environment.yml: every locked package but those conda installs itself."""
    return [f"      - {name}=={version}" for name, version in sorted(pins.items()) if name not in CONDA_OWNED]


def write_environment_yml(lock: Path = LOCK_FILE, environment: Path = ENVIRONMENT_FILE) -> int:
    """Replace the lines between the pin markers of ``environment`` by the lock's pins; return their count."""
    environment = Path(environment)
    lines = environment.read_text().splitlines()
    try:
        begin, end = lines.index(PINS_BEGIN), lines.index(PINS_END)
    except ValueError:
        raise ValueError(
            f"{environment}: pin markers not found; expected the lines\n{PINS_BEGIN}\n{PINS_END}"
        ) from None
    pins = environment_pins(read_lock(lock))
    with atomic_path(environment) as tmp:
        tmp.write_text("\n".join(lines[: begin + 1] + pins + lines[end:]) + "\n")
    return len(pins)


def main(argv: list[str] | None = None) -> None:
    """``python -m ris.lock``: mirror the lock into environment.yml (called by scripts/lock.sh)."""
    parser = argparse.ArgumentParser(prog="python -m ris.lock", description=main.__doc__)
    parser.add_argument("--lock", type=Path, default=LOCK_FILE)
    parser.add_argument("--environment", type=Path, default=ENVIRONMENT_FILE)
    args = parser.parse_args(argv)
    n = write_environment_yml(args.lock, args.environment)
    print(f"{args.environment}: {n} pins from {args.lock} (sha256 {lock_sha256(args.lock)})")


if __name__ == "__main__":
    main()
