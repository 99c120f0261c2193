"""Tokenizer and torch dataset over prepared tables; the CLI's clear errors on bad input."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from ris.data.dataset import ReferSplit
from ris.data.prepare import prepare, read_split
from ris.data.tokenizer import build_vocab, encode, tokenizer_from_vocab


def test_vocab_tokenizer_maps_real_words():
    """transformers 5 silently ignores BertTokenizer(vocab_file=...): check real words are not [UNK]."""
    vocab = build_vocab(["The small red circle", "the square left of the blue star."])
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "circle" in vocab
    tok = tokenizer_from_vocab(vocab)
    ids, mask = encode(tok, ["the small red circle", "a purple hexagon"], max_tokens=8)
    assert ids.shape == mask.shape == (2, 8)
    words = tok.convert_ids_to_tokens(ids[0].tolist())
    assert words[:6] == ["[CLS]", "the", "small", "red", "circle", "[SEP]"]
    assert mask[0].tolist() == [1] * 6 + [0] * 2
    assert tok.convert_ids_to_tokens(ids[1].tolist())[1:4] == ["[UNK]", "[UNK]", "[UNK]"]  # unseen words


def test_dataset_items_and_epoch_sentence_draw(tiny_synthetic, tmp_path):
    prepare(tiny_synthetic, "unc", ["train", "val"], tmp_path, tiny_synthetic / "images")
    table = read_split(tmp_path / "train.parquet")
    tok = tokenizer_from_vocab(build_vocab(table["sentence"]))
    train = ReferSplit(table, tiny_synthetic / "images", 48, tok, 12, train=True, seed=0)
    evals = ReferSplit(table, tiny_synthetic / "images", 48, tok, 12, train=False)
    assert len(train) == table["ref_id"].nunique() and len(evals) == len(table)
    item = evals[0]
    assert item["image"].shape == (3, 48, 48) and item["target"].shape == (48, 48)
    assert set(torch.unique(item["target"]).tolist()) <= {0, 1} and item["target"].sum() > 0
    # a ref's training sentence is drawn per epoch, deterministically
    draws = []
    for epoch in range(6):
        train.set_epoch(epoch)
        draws.append([train.row_index(i) for i in range(len(train))])
    again = ReferSplit(table, tiny_synthetic / "images", 48, tok, 12, train=True, seed=0)
    again.set_epoch(3)
    assert [again.row_index(i) for i in range(len(again))] == draws[3]
    assert len({tuple(d) for d in draws}) > 1
    assert all(table.iloc[r]["ref_id"] == table.iloc[train.ref_rows[i][0]]["ref_id"] for i, r in enumerate(draws[0]))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ris", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_clear_line(tmp_path):
    r = run_cli("prepare", "--refer-dir", str(tmp_path), "--split-by", "unc", "--splits", "val", "--out", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("ris prepare: error: ")
    assert "refs(unc).p: refs file not found" in r.stderr and "Traceback" not in r.stderr

    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps(np.zeros(3)))  # needs numpy globals: refused
    r = run_cli("prepare", "--refer-dir", str(tmp_path), "--split-by", "unc", "--splits", "val", "--out", str(tmp_path))
    assert r.returncode == 2 and "refusing to unpickle numpy" in r.stderr and "Traceback" not in r.stderr

    r = run_cli("synthesize", "--out", str(tmp_path / "s"), "--config", '{"bogus": 1}')
    assert r.returncode == 2 and "bogus" in r.stderr


def test_cli_prepares_the_real_fixture(refcocog_sample, tmp_path):
    r = run_cli(
        "prepare",
        "--refer-dir",
        str(refcocog_sample),
        "--split-by",
        "umd",
        "--splits",
        "train",
        "val",
        "test",
        "--images",
        str(refcocog_sample / "images"),
        "--out",
        str(tmp_path / "p"),
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "instances.parquet",  # the split images' COCO instances: the N masks' proposal targets
        "summary.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]


def _pillow_reference(path, size: int) -> torch.Tensor:
    """The image path before the speed-up: Pillow decode and resize, NumPy normalisation."""
    from PIL import Image

    from ris.data.dataset import IMAGENET_MEAN, IMAGENET_STD

    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_fast_image_path_matches_pillow(tmp_path):
    """torchvision's uint8 antialiased resize + fused normalisation == Pillow's path within one grey level.

    Noise images, so a different filter (no antialiasing, nearest) or normalisation is far off; JPEG colour and
    grey, PNG RGBA and palette, BMP; down- and up-scaling and no resize; files and PIL images (``ris predict``).
    """
    from PIL import Image

    from ris.data.dataset import IMAGENET_STD, image_tensor, load_image

    level = 1.0 / (255.0 * min(IMAGENET_STD))  # one grey level after normalisation, the widest channel
    rng = np.random.default_rng(0)
    cases = [((640, 480), 480, "jpg", "RGB"), ((427, 640), 480, "jpg", "L"), ((100, 70), 48, "png", "RGBA"),
             ((50, 40), 64, "png", "P"), ((333, 222), 480, "bmp", "RGB"), ((96, 96), 96, "png", "RGB")]  # fmt: skip
    for (w, h), size, ext, mode in cases:
        path = tmp_path / f"{w}x{h}_{mode}.{ext}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path)
        ref = _pillow_reference(path, size)
        for got in (load_image(path, size), image_tensor(Image.open(path), size)):
            assert got.shape == (3, size, size) and got.dtype == torch.float32
            diff = (got - ref).abs()
            assert diff.max() <= level * 1.001, (path.name, float(diff.max() / level))
            assert diff.mean() <= 0.3 * level, (path.name, float(diff.mean() / level))


def test_image_errors_name_the_file(tmp_path):
    from ris.data.dataset import load_image

    with pytest.raises(FileNotFoundError, match="missing.jpg: image file not found"):
        load_image(tmp_path / "missing.jpg", 32)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(OSError, match="notes.jpg: not a readable image"):
        load_image(tmp_path / "notes.jpg", 32)
