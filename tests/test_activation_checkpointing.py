"""Activation checkpointing (model option ``activation_checkpointing``): same gradients, really recomputed.

Every method on Swin runs its Swin blocks and per-stage fusions under a non-reentrant checkpoint while
training with gradients; the official-equality side is in ``tests/test_lavt_interop.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from torch import nn

from ris.models import METHODS, ModelConfig, RISModel, build_model
from tests.helpers import IMAGE, VOCAB, model_loss, tiny_model

TOKENS = 8
# Stochastic everywhere it can be (drop path in every Swin block, dropout in the fusions and query
# decoders), so the test also checks that the recomputation draws the same random masks as the forward.
STOCHASTIC = {"backbone_args": {"drop_path_rate": 0.2}, "fusion_dropout": 0.1, "dropout": 0.1}
NUM_MASKS = {"coupalign": 4}

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _pair(method: str, backbone: str = "swin_b", options: dict | None = None) -> tuple[RISModel, RISModel]:
    """The same random model without and with checkpointing (equal weights), in train mode."""
    models = []
    for on in (False, True):
        torch.manual_seed(0)
        declared = {o.name for o in METHODS[method].OPTIONS}  # the query decoders' dropout: CoupAlign, EAVL
        stochastic = {k: v for k, v in STOCHASTIC.items() if k != "dropout" or k in declared}
        opts = {**stochastic, **(options or {}), "activation_checkpointing": on}
        models.append(tiny_model(method, backbone, NUM_MASKS.get(method, 0), opts).train())
    models[1].load_state_dict(models[0].state_dict())
    return models[0], models[1]


def _batch(b: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(b, 3, IMAGE, IMAGE, generator=g)
    ids = torch.randint(1, VOCAB, (b, TOKENS), generator=g)
    mask = torch.ones(b, TOKENS, dtype=torch.long)
    mask[0, 5:] = 0
    target = torch.zeros(b, IMAGE, IMAGE, dtype=torch.long)
    target[0, 12:40, 16:44] = 1
    target[1:, 30:60, 4:30] = 1
    return images, ids, mask, target


def _step(model: RISModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one training step, from a fixed RNG state."""
    images, ids, mask, target = _batch()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    loss = model_loss(model, model(images, ids, mask), target)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(plain: RISModel, ckpt: RISModel) -> None:
    loss0, grads0 = _step(plain)
    loss1, grads1 = _step(ckpt)
    assert ckpt.activation_checkpointing and not plain.activation_checkpointing
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=0)
    assert grads1.keys() == grads0.keys() and len(grads0) > 20
    for name, g0 in grads0.items():
        torch.testing.assert_close(grads1[name], g0, rtol=1e-5, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_gradients_equal_with_checkpointing_on_swin(method):
    """Every method in the registry on (tiny) Swin, in train mode with drop path and dropout."""
    plain, ckpt = _pair(method)
    _assert_same_step(plain, ckpt)


def test_gradients_equal_coupalign_without_masks():
    plain, ckpt = _pair("coupalign")
    for m in (plain, ckpt):  # N = 0: CoupAlign's ablation without SMA (another head, same fusions)
        m.num_masks, m.proposal_weight, m.selection_weight = 0, 0.0, 0.0
        m.classifier = nn.Conv2d(m.decoder.hidden, 1, 1)
    ckpt.classifier.load_state_dict(plain.classifier.state_dict())
    _assert_same_step(plain, ckpt)


def test_cnn_stages_not_recomputed_fusions_are():
    """On a CNN backbone only the fusions are recomputed: BatchNorm statistics are updated once per step."""
    plain, ckpt = _pair("lavt", "resnet101", {"backbone_args": {}})
    calls = _count_calls(ckpt, (nn.BatchNorm2d,))
    _assert_same_step(plain, ckpt)
    for (name, b0), b1 in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
        assert torch.equal(b0, b1), name
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in ckpt.modules())
    assert sum(calls.values()) == n_bn  # each BatchNorm ran once: neither stage nor decoder recomputed


def _count_calls(model: nn.Module, kinds: tuple[type, ...]) -> Counter:
    """Forward calls per module of the given kinds (by name), counted by forward *pre*-hooks (a recomputation
    stops as soon as it has rebuilt what the backward needs, before the post-forward hooks would run)."""
    calls: Counter = Counter()
    for name, mod in model.named_modules():
        if isinstance(mod, kinds):
            mod.register_forward_pre_hook(lambda *_, n=name: calls.update([n]))
    return calls


RECOMPUTED = (SwinTransformerBlock, PatchMerging)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpointing_recomputes_in_backward(method):
    """Each Swin block, patch merging and stage fusion runs once in the forward and once more in the backward."""
    _, model = _pair(method)
    blocks = _count_calls(model, RECOMPUTED)
    fusions = _count_calls(model.fusions, (type(model.fusions[0]),))
    images, ids, mask, target = _batch()
    loss = model_loss(model, model(images, ids, mask), target)["loss"]
    n_blocks = sum(isinstance(m, SwinTransformerBlock) for m in model.modules())
    assert n_blocks == 5 and set(blocks.values()) == {1} and len(blocks) == n_blocks + 3
    assert set(fusions.values()) == {1} and len(fusions) == 4
    loss.backward()
    assert set(blocks.values()) == {2}, blocks
    assert set(fusions.values()) == {2}, fusions


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_checkpointing_off_outside_training(mode):
    """In eval mode (even with gradients) and under no_grad nothing is checkpointed or recomputed."""
    plain, model = _pair("lavt")
    blocks = _count_calls(model, RECOMPUTED)
    images, ids, mask, _ = _batch()
    if mode == "eval":
        plain.eval()
        model.eval()
        out = model(images, ids, mask)["logits"]
        out.sum().backward()
        assert set(blocks.values()) == {1}
        torch.testing.assert_close(out, plain(images, ids, mask)["logits"], rtol=0, atol=0)
    else:
        with torch.no_grad():
            model(images, ids, mask)
        assert set(blocks.values()) == {1}


def test_option_from_config():
    """The option is read from ModelConfig.options (default off)."""
    cfg = ModelConfig(method="lavt", size="tiny", image_size=IMAGE, vocab_size=VOCAB)
    assert not build_model(cfg).activation_checkpointing
    cfg.options["activation_checkpointing"] = True
    assert build_model(cfg).activation_checkpointing


def test_on_at_paper_scale_off_in_the_demo():
    """config.yaml: every paper-scale run config asks for it, no demo run config does."""
    from ris.config import all_runs, load_yaml, run_config

    config = load_yaml(Path(__file__).resolve().parents[1] / "config.yaml")
    for scale, on in (("paper", True), ("demo", False)):
        cfg = {**config, "scale": scale}
        runs = all_runs(cfg)
        assert runs, scale
        for key in runs:
            options = run_config(cfg, key)["model"]["options"]
            assert bool(options.get("activation_checkpointing", False)) is on, (scale, key)
