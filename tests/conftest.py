"""Shared fixtures: the real RefCOCOg sample (with stand-in images) and a tiny synthetic dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "refcocog_umd_sample"


@pytest.fixture(scope="session")
def refcocog_sample(tmp_path_factory) -> Path:
    """A copy of the real RefCOCOg (umd) sample with stand-in images of the listed sizes."""
    if not FIXTURE.exists():
        pytest.fail(f"real REFER fixture missing: {FIXTURE}")
    root = tmp_path_factory.mktemp("refcocog")
    shutil.copy(FIXTURE / "refs(umd).p", root / "refs(umd).p")
    shutil.copy(FIXTURE / "instances.json", root / "instances.json")
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
