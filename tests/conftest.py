"""Shared fixtures: the real RefCOCOg sample (with stand-in images) and a tiny synthetic dataset."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # facts the tests read, kept in the repository (README.md there)
REFCOCOG_SAMPLE = FIXTURES / "refcocog_umd_sample"
LAVT_REFERENCE = FIXTURES / "lavt_reference"


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


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread (as ``--threads 1`` jobs): on a small shared CPU two spinning threads run slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole test module: ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    with one_thread():
        yield


def cli_subcommands() -> list[str]:
    """The ``ris`` sub-commands, in the order of ``ris --help``."""
    from ris.cli import build_parser

    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(action.choices)


def model_loss(model, outputs: dict, target):
    """``model.loss`` as training calls it: with the image's objects when the model learns them
    (``RISModel.uses_instances``): here the target itself and the bottom-right quarter, at a quarter size."""
    import torch

    from ris.models.losses import InstanceTargets

    if not model.uses_instances:
        return model.loss(outputs, target)
    b, h, w = target.shape
    other = torch.zeros_like(target)
    other[:, h // 2 :, w // 2 :] = 1
    objects = torch.stack([target, other], 1).float()
    objects = (torch.nn.functional.adaptive_avg_pool2d(objects, (h // 4, w // 4)) > 0.5).to(torch.uint8)
    return model.loss(outputs, target, InstanceTargets(objects, torch.full((b,), 2), torch.zeros(b, dtype=torch.long)))
