"""`ris predict`: mask and overlay out for an image and a sentence; clear errors for what a user gets wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ris.cli import main
from ris.config import RunKey, load_yaml, run_config
from ris.data.tokenizer import build_vocab
from ris.evaluation.predict import overlay_image, predict
from ris.models import ModelConfig, build_model
from ris.training.checkpoint import save_checkpoint
from tests.helpers import REPO

SENTENCES = ["the red circle on the left", "big blue square", "object in green"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ris checkpoint of a tiny random-init LAVT (64 px), as ``ris train`` writes them."""
    cfg = load_yaml(REPO / "config.yaml")
    cfg["scales"]["demo"]["train"]["image_size"] = 64
    rc = run_config(cfg, RunKey("synthetic", "lavt", "swin_b", 0, 0))
    vocab = build_vocab(SENTENCES)
    torch.manual_seed(0)
    # random init: the demo's pretrained backbone file (results/pretrained/) is not needed to load the checkpoint
    model = build_model(ModelConfig.from_dict({**rc["model"], "vocab_size": len(vocab), "pretrained_backbone": False}))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(
        path, {"config": rc, "vocab": vocab, "vocab_size": len(vocab), "epoch": 0, "model": model.state_dict()}
    )
    return path


@pytest.fixture
def image(tmp_path):
    """A non-square RGB image (the mask must come back at this size)."""
    rng = np.random.default_rng(0)
    pixels = np.full((60, 90, 3), 118, np.uint8)
    pixels[10:40, 5:35] = (220, 40, 40)
    pixels += rng.integers(0, 5, pixels.shape, dtype=np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path)
    return path


def test_predict_writes_mask_and_overlay_at_the_image_size(checkpoint, image, tmp_path, capsys):
    out_mask, out_overlay = tmp_path / "out" / "mask.png", tmp_path / "out" / "overlay.png"
    rc = main(
        ["predict", "--checkpoint", str(checkpoint), "--image", str(image), "--sentence", "the red circle on the left",
         "--out-mask", str(out_mask), "--out-overlay", str(out_overlay)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    with Image.open(out_mask) as m:
        assert m.size == (90, 60) and m.mode == "L"
        assert set(np.unique(np.asarray(m))) <= {0, 255}
    with Image.open(out_overlay) as o:
        assert o.size == (90, 60) and o.mode == "RGB"
    summary = capsys.readouterr().out
    assert '"unknown_words": []' in summary and "lavt-swin_b-n0-s0" in summary


def test_default_output_names_beside_the_image(checkpoint, image):
    assert (
        main(["predict", "--checkpoint", str(checkpoint), "--image", str(image), "--sentence", "big blue square"]) == 0
    )
    assert image.with_suffix(".mask.png").exists() and (image.parent / "photo.mask.overlay.png").exists()


def test_predict_matches_the_model_and_reports_unknown_words(checkpoint, image):
    pred = predict(checkpoint, image, "  the   purple  unicorn ")
    assert pred.sentence == "the purple unicorn"
    assert pred.unknown_words == ["purple", "unicorn"]
    assert pred.mask.shape == (60, 90) and pred.mask.dtype == bool


def test_overlay_marks_the_mask():
    im = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:15] = True
    arr = np.asarray(overlay_image(im, mask))
    assert arr[10, 10, 0] > 100 and arr[0, 0].sum() == 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_checkpoint", "checkpoint not found"),
        ("missing_image", "image file not found"),
        ("unreadable_image", "not a readable image"),
        ("empty_sentence", "the sentence is empty"),
        ("foreign_checkpoint", "expected a checkpoint of format 'ris-checkpoint-v1'"),
        ("not_a_checkpoint", "not a readable ris checkpoint"),
    ],
)
def test_clear_errors(case, message, checkpoint, image, tmp_path, capsys):
    ckpt, img, sentence = str(checkpoint), str(image), "big blue square"
    if case == "missing_checkpoint":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "missing_image":
        img = str(tmp_path / "nope.png")
    elif case == "unreadable_image":
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        img = str(tmp_path / "broken.png")
    elif case == "empty_sentence":
        sentence = "   "
    elif case == "foreign_checkpoint":  # e.g. an official LAVT checkpoint: a dict of weights
        torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "lavt_official.pth")
        ckpt = str(tmp_path / "lavt_official.pth")
    elif case == "not_a_checkpoint":
        (tmp_path / "notes.pt").write_text("hello")
        ckpt = str(tmp_path / "notes.pt")
    rc = main(
        ["predict", "--checkpoint", ckpt, "--image", img, "--sentence", sentence, "--out-mask", str(tmp_path / "m.png")]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ris predict: error:") and message in err, err
    assert len(err.strip().splitlines()) == 1, err  # one clear line, no traceback
    assert not (tmp_path / "m.png").exists()
