"""Official LAVT checkpoints: our LAVT reproduces the official outputs; import, key map and refusals.

The reference (``tests/fixtures/lavt_reference``, see tests/fixtures/README.md) was made with the official code: a
small random LAVT (embed 16, depths 2-2-2-2, window 12) at 480x480, so stage 4 is 15x15, a size where
the official Swin (pad, then shift) and timm's (shift, then pad) differ.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from timm.layers import DropPath
from timm.models.swin_transformer import SwinTransformerBlock, get_relative_position_index

from ris.cli import main
from ris.interop.lavt import OfficialCheckpointError, convert_state, load_official
from ris.models import ModelConfig, RISModel, build_model
from tests.helpers import LAVT_REFERENCE, LAVT_TOLERANCE, lavt_differences

# LAVT paper size: backbone (Swin-B + PWAMs + gates + norms), classifier (SimpleDecoding), BERT-base
# without pooler.
PAPER_PARAMS = {"backbone": 98_196_856, "classifier": 20_651_010, "bert": 108_891_648}


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(LAVT_REFERENCE / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def official_model() -> RISModel:
    return load_official(LAVT_REFERENCE / "checkpoint.pth")


def checkpointed_training(model: RISModel) -> tuple[RISModel, Counter]:
    """``model`` with activation checkpointing on, in train mode with its random and batch-statistics layers
    (drop path, dropout, BatchNorm) in eval mode: outputs comparable to the official eval outputs while the
    Swin blocks and fusions run under the checkpoint. Also returns live forward counts of the Swin blocks."""
    model.cfg.options["activation_checkpointing"] = True
    model.activation_checkpointing = True
    model.train()
    calls: Counter = Counter()
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Dropout, DropPath, torch.nn.modules.batchnorm._BatchNorm)):
            m.eval()
        if isinstance(m, SwinTransformerBlock):
            m.register_forward_pre_hook(lambda *_, n=name: calls.update([n]))
    return model, calls


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation_checkpointing"])
def test_matches_official_outputs(official_model, reference, checkpointing):
    calls: Counter = Counter()
    if checkpointing:  # a fresh copy: the module's fixture stays as loaded
        official_model, calls = checkpointed_training(load_official(LAVT_REFERENCE / "checkpoint.pth"))
    diffs = lavt_differences(official_model, reference, grad=checkpointing)
    print("\nmax abs difference to the official LAVT:", json.dumps(diffs))
    assert set(diffs) == {"stage1", "stage2", "stage3", "stage4", "scores"}
    assert all(d < LAVT_TOLERANCE for d in diffs.values()), diffs
    scores = official_model.forward_words(
        reference["image"], reference["l_feats"].transpose(1, 2), reference["l_mask"].squeeze(-1)
    )["scores"]
    final = torch.nn.functional.interpolate(scores, size=(480, 480), mode="bilinear", align_corners=True)
    # Scores within LAVT_TOLERANCE of the official ones give its argmax wherever the two classes are further apart
    # than twice that (upsampling averages); nearer, a tie may go either way (1 pixel of 460,800 here).
    decided = (final[:, 1] - final[:, 0]).abs() > 2 * LAVT_TOLERANCE
    assert decided.float().mean() > 0.999
    assert torch.equal(final.argmax(1)[decided], reference["final_argmax"].long()[decided])  # stored as uint8
    if checkpointing:  # two forwards so far; the backward recomputes every block once more
        assert len(calls) == 8 and set(calls.values()) == {2}
        scores.sum().backward()
        assert set(calls.values()) == {3}


def test_timm_window_order_does_not_match(reference):
    """The same model with timm's shift-then-pad blocks misses the reference at the 15x15 stage."""
    model = load_official(LAVT_REFERENCE / "checkpoint.pth")
    for block in model.modules():
        if isinstance(block, SwinTransformerBlock):
            block.__class__ = SwinTransformerBlock
    diffs = lavt_differences(model, reference)
    print("\nwith timm's window order:", json.dumps(diffs))
    assert max(diffs["stage1"], diffs["stage2"], diffs["stage3"]) < LAVT_TOLERANCE  # 120, 60, 30: multiples of 12
    assert diffs["stage4"] > 0.1 and diffs["scores"] > 0.1


@pytest.mark.parametrize("size", [15, 24])
def test_official_block_pads_before_shifting(size):
    """One shifted block, same weights: the official order equals timm's on a multiple of the window only."""
    from ris.models.backbones import OfficialSwinBlock

    torch.manual_seed(0)
    block = SwinTransformerBlock(32, (size, size), num_heads=2, window_size=12, shift_size=6, dynamic_mask=True)
    x = torch.randn(1, size, size, 32)
    with torch.no_grad():
        timm_out = block(x)
        block.__class__ = OfficialSwinBlock
        official = block(x)
    assert torch.allclose(official, timm_out, atol=1e-5) == (size % 12 == 0)


def test_patch_merging_pads_odd_maps_as_official():
    """timm's merging = the official one (pad an odd map at the bottom/right, concat (0,0) (1,0) (0,1) (1,1))."""
    from timm.models.swin_transformer import PatchMerging

    torch.manual_seed(0)
    merge = PatchMerging(8)
    x = torch.randn(2, 7, 5, 8)  # odd height and width
    p = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 1))
    quads = [p[:, 0::2, 0::2], p[:, 1::2, 0::2], p[:, 0::2, 1::2], p[:, 1::2, 1::2]]
    expected = merge.reduction(merge.norm(torch.cat(quads, -1)))
    with torch.no_grad():
        assert torch.allclose(merge(x), expected, atol=1e-6)


def test_official_swin_loads_timm_imagenet_weights(tmp_path):
    """timm's ImageNet checkpoints load into our Swin unchanged (here a small random one, from a file)."""
    import timm

    from ris.models.backbones import swin_b

    arch = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
    imagenet = timm.create_model("swin_base_patch4_window12_384", **arch)  # 384 px, classifier head
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    overlay = {"file": str(tmp_path / "imagenet.pth")}
    backbone = swin_b("full", 480, pretrained=True, pretrained_cfg_overlay=overlay, **arch)
    ours = backbone.state_dict()
    for name, value in imagenet.state_dict().items():
        if name.startswith(("head.", "norm.")):
            continue
        mapped = name.replace("patch_embed.", "stem.", 1).replace("layers.", "stages.", 1)
        assert torch.equal(ours[mapped], value), name


def _paper_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """An official-format state dict with the paper model's keys and shapes (meta tensors: no memory)."""
    sd = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    for k in sd:
        if k.endswith("relative_position_index"):
            sd[k] = get_relative_position_index(12, 12)
    return sd


def test_paper_keys_map_onto_paper_size_model():
    keys = json.loads((LAVT_REFERENCE / "paper_keys.json").read_text())
    with torch.device("meta"):
        model = build_model(ModelConfig(method="lavt", size="full", image_size=480))
    target = model.state_dict()
    converted = convert_state(_paper_state(keys), None, target, Path("paper_keys.json"))
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)

    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    assert count(model.backbone, model.fusions) == PAPER_PARAMS["backbone"]
    assert count(model.decoder, model.classifier) == PAPER_PARAMS["classifier"]
    assert count(model.text) == PAPER_PARAMS["bert"]
    assert count(model) == sum(PAPER_PARAMS.values())


# ------------------------------------------------------------------------------------------ the command


def _broken(tmp_path: Path, edit) -> Path:
    ckpt = torch.load(LAVT_REFERENCE / "checkpoint.pth", weights_only=True)
    edit(ckpt["model"])
    path = tmp_path / "broken.pth"
    torch.save(ckpt, path)
    return path


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.pth"
    path.write_bytes((LAVT_REFERENCE / "checkpoint.pth").read_bytes()[:100_000])
    return path


def _other_format(tmp_path: Path) -> Path:
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, path)
    return path


def _missing_key(tmp_path: Path) -> Path:
    return _broken(tmp_path, lambda sd: sd.pop("backbone.layers.1.fusion.project_mm.0.weight"))


def _wrong_shape(tmp_path: Path) -> Path:
    return _broken(tmp_path, lambda sd: sd.update({"classifier.conv1_1.weight": torch.zeros(2, 7, 1, 1)}))


BAD = {
    "truncated": (_truncated, "not a readable PyTorch checkpoint"),
    "other format": (_other_format, "no 'model' state dict"),
    "missing key": (_missing_key, "missing fusions.1.pwam.mm_proj.0.weight"),
    "no bert_model": (lambda tmp_path: LAVT_REFERENCE / "checkpoint.pth", "no bert_model (the fine-tuned BERT)"),
    "wrong shape": (_wrong_shape, "mis-shaped classifier.conv1_1.weight [2, 7, 1, 1] (expected [2, 64, 1, 1])"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_one_clear_line(case, tmp_path, capsys):
    make, expected = BAD[case]
    path = make(tmp_path)
    rc = main(["import-checkpoint", "--format", "lavt", str(path), "--out", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err and str(path) in err
    assert not (tmp_path / "model.pt").exists()


def test_bad_checkpoint_errors_name_every_problem(tmp_path):
    def edit(sd: dict) -> None:
        sd.pop("backbone.norm2.weight")
        sd["backbone.layers.0.fusion.extra.weight"] = torch.zeros(1)

    with pytest.raises(OfficialCheckpointError, match=r"missing fusions\.2\.norm\.norm\.weight; unexpected"):
        load_official(_broken(tmp_path, edit))


def test_import_writes_a_ris_checkpoint(reference, tiny_synthetic, tmp_path, capsys):
    """With a (random, small-vocabulary) ``bert_model`` and a DAG run config: the ris checkpoint rebuilds
    the same network, and ``ris evaluate`` and ``ris predict`` take it."""
    from PIL import Image
    from transformers import BertConfig, BertModel

    from ris.data.prepare import prepare
    from ris.data.tokenizer import tokenizer_from_vocab
    from ris.evaluation.predict import predict
    from ris.models.text import BERT_BASE
    from ris.training.checkpoint import load_checkpoint, model_from_checkpoint

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=16, max_position_embeddings=512, **BERT_BASE), add_pooling_layer=True)
    ckpt = torch.load(LAVT_REFERENCE / "checkpoint.pth", weights_only=True)
    ckpt["bert_model"] = bert.state_dict()  # with the pooler, which LAVT does not use: ignored
    src = tmp_path / "refcoco.pth"
    torch.save(ckpt, src)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle"]
    tokenizer_from_vocab(vocab).save_pretrained(tmp_path / "tokenizer")
    run = {
        "run": "synthetic/lavt-swin_b-n0-s0",
        "dataset": "synthetic",
        "seed": 0,
        "model": {"image_size": 64, "pretrained_text": str(tmp_path / "tokenizer")},
        "train": {"image_size": 64, "max_tokens": 20},
    }
    out = tmp_path / "model.pt"
    args = ["import-checkpoint", "--format", "lavt", str(src), "--out", str(out), "--run-config", json.dumps(run)]
    assert main(args) == 0

    model, tokenizer, config = model_from_checkpoint(load_checkpoint(out))
    assert config["model"]["size"] == "full" and config["model"]["options"]["backbone_args"]["embed_dim"] == 16
    assert config["model"]["image_size"] == 64 and config["run"] == run["run"]
    assert tokenizer.convert_tokens_to_ids("circle") == 7
    assert torch.equal(model.text.bert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert max(lavt_differences(model, reference).values()) < LAVT_TOLERANCE

    Image.new("RGB", (90, 60), (200, 30, 30)).save(tmp_path / "photo.png")
    pred = predict(out, tmp_path / "photo.png", "the red circle")
    assert pred.mask.shape == (60, 90) and pred.unknown_words == []

    prepare(tiny_synthetic, "unc", ["val"], tmp_path / "prepared", tiny_synthetic / "images")
    evaluate = ["evaluate", "--checkpoint", str(out), "--prepared", str(tmp_path / "prepared"), "--splits", "val"]
    evaluate += ["--images", str(tiny_synthetic / "images"), "--out", str(tmp_path / "eval")]
    assert main([*evaluate, "--no-mlflow"]) == 0
    metrics = json.loads((tmp_path / "eval" / "val" / "metrics.json").read_text())
    evaluate[evaluate.index("val")] = "nosuch"
    assert main([*evaluate, "--no-mlflow"]) == 2  # a split with no prepared table: one line, nothing written
    assert "no prepared table nosuch.parquet" in capsys.readouterr().err and not (tmp_path / "eval/nosuch").exists()
    assert metrics["run"] == run["run"] and metrics["method"] == "lavt" and metrics["counts"]["samples"] > 0
