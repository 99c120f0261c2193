"""LAVT's official optimizer recipe on the paper-size model (built on the meta device: no memory)."""

from __future__ import annotations

import json

import pytest
import torch

from ris.interop.lavt import map_key
from ris.models import ModelConfig, build_model
from ris.training.optim import build_optimizer, lavt_official_groups, poly_lambda
from tests.helpers import LAVT_REFERENCE, make_config, train_here

PAPER_KEYS = LAVT_REFERENCE / "paper_keys.json"
BUFFERS = ("relative_position_index", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def paper_model() -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(ModelConfig(method="lavt", size="full", image_size=480))


def _official_groups() -> dict[str, set[str]]:
    """The official train.py rule applied to the official parameter names, translated to ours."""
    groups: dict[str, set[str]] = {"backbone_no_decay": set(), "decay": set()}
    for key in json.loads(PAPER_KEYS.read_text()):
        if key.endswith(BUFFERS):
            continue
        name = key.removeprefix("backbone.")
        no_decay = key.startswith("backbone.") and any(
            s in name for s in ("norm", "absolute_pos_embed", "relative_position_bias_table")
        )
        groups["backbone_no_decay" if no_decay else "decay"].add(map_key(key))
    return groups


def test_lavt_official_groups_on_paper_model(paper_model):
    names = {id(p): n for n, p in paper_model.named_parameters()}
    groups = {g["name"]: g for g in lavt_official_groups(paper_model, 0.01)}
    assert [g["weight_decay"] for g in groups.values()] == [0.0, 0.01, 0.01]
    ours = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    official = _official_groups()
    assert ours["backbone_no_decay"] == official["backbone_no_decay"]
    assert ours["decay"] == official["decay"]
    assert (
        len(ours["backbone_no_decay"]) == 4 * 2 + 24 * 5 + 3 * 2 + 2
    )  # norm0-3, 24 blocks x (2 norms + table), merges, patch embed
    bert_layers = {int(n.split(".")[4]) for n in ours["bert"]}
    assert bert_layers == set(range(10))
    layer_size = sum(p.numel() for p in paper_model.text.bert.encoder.layer[0].parameters())
    assert sum(p.numel() for p in groups["bert"]["params"]) == 10 * layer_size
    left_out = set(names.values()) - set().union(*ours.values())
    assert left_out == {n for n in names.values() if n.startswith("text.")} - ours["bert"]
    assert any(n.startswith("text.bert.embeddings.") for n in left_out)
    assert any(n.startswith("text.bert.encoder.layer.11.") for n in left_out)


def test_build_optimizer_freezes_what_lavt_never_optimises(paper_model):
    opt = build_optimizer(paper_model, "lavt_official", 5e-5, 0.01)
    try:
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        for name, p in paper_model.named_parameters():
            assert p.requires_grad == (id(p) in in_opt), name
        assert not paper_model.text.bert.embeddings.word_embeddings.weight.requires_grad
        assert [g["lr"] for g in opt.param_groups] == [5e-5] * 3
    finally:
        paper_model.requires_grad_(True)
    with pytest.raises(ValueError, match="not one of adamw, lavt_official"):
        build_optimizer(paper_model, "sgd", 1e-3, 0.0)


def test_poly_decay_per_iteration():
    iters_per_epoch, epochs = 7, 3
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=5e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(iters_per_epoch * epochs, 0.9))
    for it in range(iters_per_epoch * epochs):
        assert opt.param_groups[0]["lr"] == pytest.approx(5e-5 * (1 - it / (iters_per_epoch * epochs)) ** 0.9)
        opt.step()
        sched.step()


def test_training_with_the_official_recipe(prepared_tiny, store, tmp_path):
    """`train.optimizer: lavt_official` reaches the training loop: three groups, BERT's embeddings untouched."""
    cfg = make_config(prepared_tiny, store, optimizer="lavt_official", epochs=1, max_steps_per_epoch=2, keep_work=True)
    train_here(cfg, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "work" / "last.pt", weights_only=True)
    groups = last["optimizer"]["param_groups"]
    assert [(g["name"], g["weight_decay"]) for g in groups] == [
        ("backbone_no_decay", 0.0),
        ("decay", 0.01),
        ("bert", 0.01),
    ]
    with torch.device("meta"):
        tiny = build_model(ModelConfig.from_dict({**cfg["model"], "vocab_size": last["vocab_size"]}))
    frozen = sum(p.numel() for p in tiny.text.bert.embeddings.parameters())
    last_gate = sum(p.numel() for p in tiny.fusions[3].gate.parameters())  # never has a gradient (as official)
    stepped = sum(s["exp_avg"].numel() for s in last["optimizer"]["state"].values())
    assert stepped == sum(p.numel() for p in tiny.parameters()) - frozen - last_gate
