"""The locked environment: requirements-lock.txt is complete, hashed, installed, mirrored, and tagged on runs."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from ris.lock import LOCK_FILE, environment_pins, lock_sha256, normalize, read_lock
from tests.helpers import REPO

LOCKED_TARGET = platform.system() == "Linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)


def pyproject_requirements() -> list[Requirement]:
    """Dependencies of pyproject.toml, extras included (what the lock must cover)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return [Requirement(x) for x in lines]


def test_lock_pins_every_dependency_within_the_pyproject_ranges():
    pins = read_lock()
    assert len(pins) > 100  # the whole environment, transitive dependencies included, not only ours
    for req in pyproject_requirements():
        name = normalize(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements-lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} outside {req}"
    # the installer and build backend are locked too, and the torch stack with its CUDA wheels
    for name in ("pip", "setuptools", "torch", "torchvision", "triton", "nvidia-cublas", "sentence-transformers"):
        assert name in pins


@pytest.mark.skipif(not LOCKED_TARGET, reason="requirements-lock.txt is for Linux x86_64, CPython 3.11")
def test_installed_core_packages_are_the_locked_versions():
    """What scripts/setup.sh installed (pip freeze) is the lock, for our direct dependencies and torch's stack."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    installed = {}
    for line in out.splitlines():
        if "==" in line and not line.startswith(("#", "-e")):
            name, version = line.split("==", 1)
            installed[normalize(name)] = version.strip()
    pins = read_lock()
    core = {normalize(r.name) for r in pyproject_requirements()} | {"pip", "triton", "numpy", "nvidia-cudnn-cu13"}
    wrong = {n: (installed.get(n, "not installed"), pins[n]) for n in sorted(core) if installed.get(n) != pins[n]}
    assert not wrong, f"installed vs locked (run `bash scripts/setup.sh`): {wrong}"


def test_environment_yml_mirrors_the_lock():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    expected = [line.strip().removeprefix("- ") for line in environment_pins(read_lock())]
    assert pip_section == expected, "environment.yml is stale: run `bash scripts/lock.sh`"


def test_read_lock_refuses_loose_or_unhashed_requirements(tmp_path):
    good = "# header\nfoo==1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via bar\nBar_Baz==2.0 \\\n"
    good += "    --hash=sha256:" + "b" * 64 + "\n"
    (tmp_path / "ok.txt").write_text(good)
    assert read_lock(tmp_path / "ok.txt") == {"foo": "1.0", "bar-baz": "2.0"}
    (tmp_path / "loose.txt").write_text("foo>=1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        read_lock(tmp_path / "loose.txt")
    (tmp_path / "nohash.txt").write_text("foo==1.0\n")
    with pytest.raises(ValueError, match="has no --hash"):
        read_lock(tmp_path / "nohash.txt")
    with pytest.raises(FileNotFoundError, match="scripts/lock.sh"):
        read_lock(tmp_path / "absent.txt")


def test_runs_are_tagged_with_the_lock_hash():
    from ris.training.run_log import runtime_tags

    digest = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()
    assert lock_sha256() == digest
    assert runtime_tags("cpu")["env_lock_sha256"] == digest
