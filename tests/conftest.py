"""Fixtures that several test modules use (pytest finds them here); the helpers they build on, and that tests
import, are in ``tests/helpers.py``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REFCOCOG_SAMPLE, REPO, make_config, one_thread, train_here

# ---------------------------------------------------------------------------------------------------- data


@pytest.fixture
def config() -> dict:
    """The shipped config.yaml, freshly loaded (a test may change its copy)."""
    from ris.config import load_yaml

    return load_yaml(REPO / "config.yaml")


@pytest.fixture(scope="session")
def refcocog_sample(tmp_path_factory) -> Path:
    """A copy of the real RefCOCOg (umd) sample with stand-in images of the listed sizes."""
    root = tmp_path_factory.mktemp("refcocog")
    shutil.copy(REFCOCOG_SAMPLE / "refs(umd).p", root / "refs(umd).p")
    shutil.copy(REFCOCOG_SAMPLE / "instances.json", root / "instances.json")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for im in json.loads((root / "instances.json").read_text())["images"]:
        pixels = rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / im["file_name"])
    return root


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A small synthetic REFER dataset (64 px)."""
    from ris.data.synthetic import SyntheticConfig, synthesize

    root = tmp_path_factory.mktemp("synthetic")
    cfg = SyntheticConfig.from_dict(
        {"seed": 3, "image_size": 64, "num_images": {"train": 16, "val": 6, "testA": 4, "testB": 4}}
    )
    synthesize(root, cfg)
    return root


@pytest.fixture(scope="module")
def prepared_tiny(tiny_synthetic, tmp_path_factory) -> dict[str, Path]:
    """Prepared train/val tables of the tiny synthetic set (32 train refs, 36 val samples)."""
    from ris.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(tiny_synthetic, "unc", ["train", "val"], out, tiny_synthetic / "images")
    return {"prepared": out, "images": tiny_synthetic / "images"}


# ------------------------------------------------------------------------------------------------- threads


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole test module: ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    with one_thread():
        yield


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A SQLite MLflow store, created once (as the pipeline's mlflow_init rule does)."""
    from ris.training.tracking import init_store

    uri = "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    init_store(uri)
    return uri


@pytest.fixture(scope="module")
def reference_run(prepared_tiny, store, tmp_path_factory) -> Path:
    """An uninterrupted single-process run of :func:`make_config`'s configuration (2 epochs x 3 steps of 4)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train_here(make_config(prepared_tiny, store), out)
    return out
