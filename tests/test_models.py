"""Model-level tests over the whole registry: shapes, finite losses, gradients, overfitting, paper size.

The tiny models come from ``tests.helpers.tiny_model``; ``tests/test_adding_a_method.py`` runs these tests on
the example method of docs/adding-a-method.md."""

from __future__ import annotations

import re

import pytest
import torch

from ris.models import BACKBONES, METHODS, ModelConfig, build_model
from tests.helpers import IMAGE, VOCAB, model_loss, tiny_model

TOKENS = 8

# Parameters that may receive no gradient (None) by design, per method (regular expressions on parameter
# names); every other trainable parameter must get a finite gradient (an all-zero gradient counts, e.g. a
# gate initialised at zero). The only entry: the language gate of the *last* stage, whose output
# would feed a fifth backbone stage that does not exist. The same holds in official LAVT, which is why its
# train.py wraps the model in DistributedDataParallel(find_unused_parameters=True).
LAST_GATE = r"^fusions\.3\.(l2v\.)?gate\."
NO_GRAD_ALLOWED: dict[str, tuple[str, ...]] = {m: (LAST_GATE,) for m in ("lavt", "coupalign", "eavl", "jmceln")}

# The default case of each method in the registry-wide grid (CoupAlign with its SMA path on).
DEFAULT_MASKS = {"coupalign": 4}

# Extra cases: the mask / query count N of the query-based methods.
EXTRA_CASES = [
    ("coupalign", "swin_b", 0, {}),
    ("coupalign", "swin_b", 1, {}),
    ("eavl", "swin_b", 1, {}),
    ("eavl", "swin_b", 0, {"num_queries": 4}),
    ("jmceln", "swin_b", 0, {"num_stages": 1, "context_tokens": 1}),
]
# The demo preset's narrower widths (options word_dim, decoder_dim), on every method.
NARROW = {"word_dim": 16, "decoder_dim": 32}
EXTRA_CASES += [(m, "swin_b", DEFAULT_MASKS.get(m, 0), NARROW) for m in sorted(METHODS)]

GRID = [(m, b, DEFAULT_MASKS.get(m, 0), {}) for m in sorted(METHODS) for b in sorted(BACKBONES)] + EXTRA_CASES


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two images, 8 tokens (the second sentence padded after 5), a square target in each image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=g)
    ids = torch.randint(1, VOCAB, (2, TOKENS), generator=g)
    mask = torch.ones(2, TOKENS, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    target = torch.zeros(2, IMAGE, IMAGE, dtype=torch.long)
    target[0, 12:40, 16:44] = 1
    target[1, 30:60, 4:30] = 1
    return images, ids, mask, target


def _case_id(case: tuple) -> str:
    method, backbone, n, options = case
    extra = "".join(f"-{k}{v}" for k, v in options.items())
    return f"{method}-{backbone}-n{n}{extra}"


@pytest.mark.parametrize("case", GRID, ids=[_case_id(c) for c in GRID])
def test_forward_loss_backward(case):
    method, backbone, num_masks, options = case
    torch.manual_seed(0)
    model = tiny_model(method, backbone, num_masks, options)
    images, ids, mask, target = _batch()
    out = model(images, ids, mask)
    logits = out["logits"]
    assert logits.dim() == 4 and logits.shape[:2] == (2, 1)
    assert torch.isfinite(logits).all()
    losses = model_loss(model, out, target)
    loss = losses["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    for name, part in losses.items():
        if name != "loss":
            assert not part.requires_grad and torch.isfinite(part), name
    loss.backward()
    allowed = NO_GRAD_ALLOWED.get(method, ())
    missing, bad = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or any(re.search(a, name) for a in allowed):
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            bad.append(name)
    assert not missing, f"no gradient: {missing}"
    assert not bad, f"non-finite gradient: {bad}"
    pred = model.eval().predict(images, ids, mask, (IMAGE, IMAGE))
    assert pred.shape == (2, IMAGE, IMAGE) and pred.dtype == torch.bool


@pytest.mark.parametrize("method", sorted(METHODS))
def test_word_dim_and_decoder_dim_set_the_widths(method):
    """word_dim: one projection of the words, which every fusion then takes; decoder_dim: the pixel decoder's
    width. Unset (paper scale), the model has no projection and LAVT's widths (its keys stay official)."""
    narrow = tiny_model(method, num_masks=DEFAULT_MASKS.get(method, 0), options=NARROW)
    plain = tiny_model(method, num_masks=DEFAULT_MASKS.get(method, 0))
    assert narrow.lang_dim == 16 and narrow.text_proj.in_features == plain.text.dim == plain.lang_dim
    assert narrow.decoder.hidden == 32 and plain.decoder.hidden == plain.backbone.channels[3] // 2
    assert not any(k.startswith("text_proj.") for k in plain.state_dict())
    keys = [m for name, m in narrow.named_modules() if name.startswith("fusions.") and name.endswith("pwam.key")]
    assert len(keys) == 4 and all(m.in_features == 16 for m in keys)


def test_lavt_forward_words_projects_text_features():
    """forward_words takes the text encoder's features, as the official model does; word_dim applies inside."""
    torch.manual_seed(0)
    model = tiny_model("lavt", options=NARROW).eval()
    images, ids, mask, _ = _batch()
    words, _ = model.text(ids, mask)
    with torch.no_grad():
        a = model(images, ids, mask)["logits"]
        b = model.forward_words(images, words, mask)["logits"]
    assert torch.equal(a, b)


def test_coupalign_without_masks_has_no_sma():
    shared = {"backbone", "text", "fusions", "decoder", "pixel_embed", "sentence_proj"}
    model = tiny_model("coupalign", num_masks=0)
    heads = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert heads == shared | {"classifier"}  # no query / query decoder / SMA parameters at N = 0
    assert not [n for n in heads if "query" in n or "hypotheses" in n]
    with_sma = tiny_model("coupalign", num_masks=4)
    heads = {n.split(".")[0] for n, _ in with_sma.named_parameters()}
    assert heads == shared | {"query_feat", "query_pos", "query_decoder", "hypotheses"}
    assert with_sma.query_feat.num_embeddings == 4
    images, ids, mask, _ = _batch()
    out = with_sma(images, ids, mask)
    assert out["masks"].shape[:2] == (2, 4)
    assert torch.allclose(out["mask_weights"].sum(1), torch.ones(2))


def test_eavl_query_count():
    assert tiny_model("eavl").num_queries == 8
    assert tiny_model("eavl", num_masks=3).num_queries == 3
    assert tiny_model("eavl", options={"num_queries": 5}).num_queries == 5
    with pytest.raises(ValueError):
        tiny_model("eavl", num_masks=3, options={"num_queries": 5})
    images, ids, mask, _ = _batch()
    out = tiny_model("eavl", num_masks=3)(images, ids, mask)
    assert out["masks"].shape[:2] == (2, 3)
    assert torch.allclose(out["mask_weights"].sum(1), torch.ones(2))


def test_jmceln_stages():
    model = tiny_model("jmceln", options={"num_stages": 2, "stage_weights": [0.5, 1.0]})
    images, ids, mask, target = _batch()
    out = model(images, ids, mask)
    assert len(out["stage_logits"]) == 2 and out["logits"] is out["stage_logits"][-1]
    losses = model_loss(model, out, target)
    stages = (0.5 * losses["stage1"] + 1.0 * losses["stage2"]) / 1.5
    hypotheses = model.proposal_weight * losses["proposal"] + model.selection_weight * losses["selection"]
    expected = stages + model.option("aux_weight") * losses["aux"] + hypotheses
    assert torch.allclose(losses["loss"].detach(), expected)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_overfits_one_batch(method):
    torch.manual_seed(0)
    model = tiny_model(method, "swin_b", DEFAULT_MASKS.get(method, 0))
    model.train()
    images, ids, mask, target = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = last = None
    for _ in range(40):
        loss = model_loss(model, model(images, ids, mask), target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = loss.item()
        first = last if first is None else first
        if last <= 0.5 * first:
            break
    assert last <= 0.5 * first, f"{method}: loss {first:.3f} -> {last:.3f} in 40 steps"


PAPER_CASES = [(m, b) for m in sorted(METHODS) for b in sorted(BACKBONES)]


@pytest.mark.slow
@pytest.mark.parametrize("method,backbone", PAPER_CASES, ids=[f"{m}-{b}" for m, b in PAPER_CASES])
def test_paper_size_networks_build_and_predict(method, backbone):
    """Paper-size networks (random init) build, and one forward at 480 px, 20 tokens gives finite 1/4-size
    logits. Their time and parameter counts: ``python -m benchmarks.paper_forward``."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        method=method,
        backbone=backbone,
        size="full",
        image_size=480,
        num_masks=8 if method == "coupalign" else 0,
    )
    model = build_model(cfg).eval()
    ids = torch.randint(1000, cfg.vocab_size, (1, 20))
    mask = torch.ones(1, 20, dtype=torch.long)
    mask[0, 12:] = 0
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 480, 480), ids, mask)["logits"]
    assert logits.shape == (1, 1, 120, 120) and torch.isfinite(logits).all()
