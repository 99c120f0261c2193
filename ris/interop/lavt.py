"""Import checkpoints of the official LAVT code (yz93/LAVT-RIS) as ``ris`` models.

The official training script saves ``{"model": state_dict, "bert_model": state_dict, ...}``: ``model``
holds ``backbone.*`` (``MultiModalSwinTransformer``: Swin with a PWAM and a language gate per stage,
``norm0..3`` on the maps handed to the decoder) and ``classifier.*`` (``SimpleDecoding``); ``bert_model``
is a Hugging Face ``BertModel`` without its pooler. ``lavt_one`` checkpoints hold BERT inside ``model``
under ``text_encoder.``. The architecture is read from the tensors (Swin width, depths, heads and
window from the relative-position tables); the number of PWAM heads, which no tensor shows, comes from
the checkpoint's ``args.mha`` when saved (the official default, one head, otherwise). Every key is
mapped onto :class:`ris.models.lavt.LAVT` (whose Swin follows the official window semantics); a
missing, unexpected or mis-shaped key refuses the whole checkpoint, naming the keys.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.models.swin_transformer import get_relative_position_index

from ris.models import ModelConfig, RISModel, build_model
from ris.training.checkpoint import CheckpointError, save_model_checkpoint

log = logging.getLogger(__name__)

#: LAVT's Swin-B (``segmentation.py``, window 12): what ``size: full`` builds without ``backbone_args``.
SWIN_B = {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12}

#: Keys of the official files that carry nothing to import: BERT's pooler (LAVT sets it to None) and
#: the position-id buffer older transformers versions saved.
IGNORED_BERT = re.compile(r"^(pooler\.|embeddings\.position_ids$)")

_DECODER = {"4": 0, "3": 1, "2": 2}  # SimpleDecoding's conv/bn suffix -> our TopDownDecoder step
_PWAM = {
    "vis_project.0": "vis_proj.0",
    "image_lang_att.f_query.0": "query.0",
    "image_lang_att.f_key.0": "key",
    "image_lang_att.f_value.0": "value",
    "image_lang_att.W.0": "lang_out.0",
    "project_mm.0": "mm_proj.0",
}


class OfficialCheckpointError(CheckpointError):
    """A file is not an official LAVT checkpoint we can import (the message says why, in one line)."""


@dataclass
class LavtArchitecture:
    """What an official checkpoint's tensors say about its network."""

    embed_dim: int
    depths: list[int]
    num_heads: list[int]
    window_size: int
    fusion_heads: int
    vocab_size: int

    def backbone_args(self) -> dict[str, Any]:
        """``backbone_args`` for ``swin_b``: empty for LAVT's Swin-B, the architecture otherwise."""
        arch = {k: getattr(self, k) for k in SWIN_B}
        return {} if arch == SWIN_B else arch


def read_official(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, Any]:
    """(model state, BERT state or None, saved ``args`` or None) of an official checkpoint file.

    Loaded with ``weights_only=True``; ``argparse.Namespace`` (the saved ``args``) is the one class allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OfficialCheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {type(e).__name__}: {first}"
        ) from None
    if isinstance(ckpt, dict) and "format" in ckpt and "model" in ckpt:
        raise OfficialCheckpointError(f"{path}: a ris checkpoint ({ckpt['format']}), not an official LAVT one")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise OfficialCheckpointError(f"{path}: not an official LAVT checkpoint (no 'model' state dict; found {found})")
    model, bert = dict(ckpt["model"]), ckpt.get("bert_model")
    if any(k.startswith("module.") for k in model):  # saved from the DistributedDataParallel wrapper
        model = {k.removeprefix("module."): v for k, v in model.items()}
    inner = {k[len("text_encoder.") :]: v for k, v in model.items() if k.startswith("text_encoder.")}
    if inner:  # lavt_one: BERT inside the model
        model = {k: v for k, v in model.items() if not k.startswith("text_encoder.")}
        bert = inner if bert is None else bert
    for name, sd in (("model", model), ("bert_model", bert or {})):
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise OfficialCheckpointError(f"{path}: {name}[{bad[0]!r}] is not a tensor")
    return model, (dict(bert) if bert is not None else None), ckpt.get("args")


def _need(sd: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in sd:
        raise OfficialCheckpointError(f"{path}: cannot infer the architecture: missing key {key}")
    return sd[key]


def infer_architecture(
    model: dict[str, torch.Tensor], bert: dict[str, torch.Tensor] | None, args: Any, path: Path
) -> LavtArchitecture:
    """The network of an official checkpoint, from its tensors (and ``args.mha`` for the PWAM heads)."""
    embed = _need(model, "backbone.patch_embed.proj.weight", path)
    if embed.dim() != 4 or tuple(embed.shape[1:]) != (3, 4, 4):
        raise OfficialCheckpointError(
            f"{path}: backbone.patch_embed.proj.weight has shape {list(embed.shape)}; expected [C, 3, 4, 4]"
        )
    block = re.compile(r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.")
    depth: dict[int, int] = {}
    for k in model:
        if m := block.match(k):
            i, j = int(m[1]), int(m[2])
            depth[i] = max(depth.get(i, 0), j + 1)
    if sorted(depth) != [0, 1, 2, 3]:
        raise OfficialCheckpointError(f"{path}: expected Swin stages 0-3 under backbone.layers, found {sorted(depth)}")
    heads, windows = [], set()
    for i in range(4):
        table = _need(model, f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table", path)
        side = math.isqrt(table.shape[0])
        if table.dim() != 2 or side * side != table.shape[0] or side % 2 == 0:
            raise OfficialCheckpointError(
                f"{path}: stage {i}'s relative-position table {list(table.shape)} is not square"
            )
        heads.append(int(table.shape[1]))
        windows.add((side + 1) // 2)
    if len(windows) != 1:
        raise OfficialCheckpointError(f"{path}: stages use different windows {sorted(windows)}")
    vocab = 30522
    if bert is not None:
        vocab = int(_need(bert, "embeddings.word_embeddings.weight", path).shape[0])
    return LavtArchitecture(
        embed_dim=int(embed.shape[0]),
        depths=[depth[i] for i in range(4)],
        num_heads=heads,
        window_size=windows.pop(),
        fusion_heads=_fusion_heads(args, path),
        vocab_size=vocab,
    )


def _fusion_heads(args: Any, path: Path) -> int:
    """PWAM heads from the saved ``args.mha`` ("" = one head per stage, "a-b-c-d" = per stage)."""
    mha = getattr(args, "mha", "") or ""
    if not mha:
        return 1
    per_stage = {int(h) for h in str(mha).split("-")}
    if len(per_stage) != 1:
        raise OfficialCheckpointError(f"{path}: PWAM heads differ per stage (args.mha={mha!r}); not supported")
    return per_stage.pop()


def map_key(key: str) -> str | None:
    """Our name of an official ``model`` key (None: a key with no counterpart)."""
    if m := re.match(r"^backbone\.patch_embed\.(.+)$", key):
        return f"backbone.stem.{m[1]}"
    if m := re.match(r"^backbone\.layers\.(\d+)\.blocks\.(.+)$", key):
        return f"backbone.stages.{m[1]}.blocks.{m[2]}"
    if m := re.match(r"^backbone\.layers\.(\d+)\.downsample\.(.+)$", key):  # official: end of stage i
        return f"backbone.stages.{int(m[1]) + 1}.downsample.{m[2]}"  # timm: start of stage i + 1
    if m := re.match(r"^backbone\.layers\.(\d+)\.fusion\.(.+)\.(weight|bias)$", key):
        ours = _PWAM.get(m[2])
        return None if ours is None else f"fusions.{m[1]}.pwam.{ours}.{m[3]}"
    if m := re.match(r"^backbone\.layers\.(\d+)\.res_gate\.([02])\.weight$", key):
        return f"fusions.{m[1]}.gate.gate.{m[2]}.weight"
    if m := re.match(r"^backbone\.norm(\d)\.(.+)$", key):
        return f"fusions.{m[1]}.norm.norm.{m[2]}"
    if m := re.match(r"^classifier\.(conv|bn)([12])_([234])\.(.+)$", key):
        return f"decoder.fuse.{_DECODER[m[3]]}.{int(m[2]) - 1}.{0 if m[1] == 'conv' else 1}.{m[4]}"
    if m := re.match(r"^classifier\.conv1_1\.(.+)$", key):
        return f"classifier.{m[1]}"
    return None


def _fit(value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``value`` in ``shape`` when they differ only by trailing 1s (Conv1d/Linear/1x1 Conv2d), else None."""

    def core(s: tuple[int, ...]) -> tuple[int, ...]:
        while len(s) > 2 and s[-1] == 1:
            s = s[:-1]
        return s

    if tuple(value.shape) == tuple(shape):
        return value
    if core(tuple(value.shape)) == core(tuple(shape)):
        return value.reshape(shape)
    return None


def convert_state(
    model: dict[str, torch.Tensor], bert: dict[str, torch.Tensor] | None, target: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Official ``model`` (+ ``bert_model``) tensors under our names and shapes, checked against ``target``.

    Swin's ``relative_position_index`` buffers are not imported (timm computes them) but must equal
    timm's. Without ``bert``, the text encoder's tensors are taken from ``target`` (left as built).
    """
    out: dict[str, torch.Tensor] = {}
    unexpected, misshaped = [], []
    sources = [(k, map_key(k), v) for k, v in model.items()]
    if bert is not None:
        sources += [(f"bert_model.{k}", f"text.bert.{k}", v) for k, v in bert.items() if not IGNORED_BERT.match(k)]
    for name, ours, value in sources:
        if name.endswith("attn.relative_position_index"):
            side = math.isqrt(value.shape[-1]) if value.dim() == 2 else 0
            if value.dim() != 2 or not torch.equal(value.long(), get_relative_position_index(side, side)):
                misshaped.append(f"{name} (not Swin's relative-position index)")
            continue
        if ours is None or ours not in target:
            unexpected.append(name)
            continue
        fitted = _fit(value, target[ours].shape)
        if fitted is None:
            misshaped.append(f"{name} {list(value.shape)} (expected {list(target[ours].shape)})")
            continue
        out[ours] = fitted.to(target[ours].dtype)
    if bert is None:
        out.update({k: v for k, v in target.items() if k.startswith("text.")})
    missing = [k for k in target if k not in out and not k.endswith("num_batches_tracked")]
    problems = [
        f"{what} {_names(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if keys
    ]
    if problems:
        raise OfficialCheckpointError(f"{path}: does not match the LAVT it describes: {'; '.join(problems)}")
    for k, v in target.items():  # BatchNorm counters some official files lack
        out.setdefault(k, v)
    return out


def _names(keys: list[str], most: int = 5) -> str:
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def model_config(arch: LavtArchitecture, image_size: int = 480, tokenizer: str = "bert-base-uncased") -> ModelConfig:
    """The ``ris`` model config of an official LAVT (``size: full``: BERT-base, Swin-B unless told otherwise)."""
    options: dict[str, Any] = {
        "fusion_heads": arch.fusion_heads,
        "fusion_dropout": 0.0,
        "fg_weight": 1.1,
        "bg_weight": 0.9,
    }
    if arch.backbone_args():
        options["backbone_args"] = arch.backbone_args()
    return ModelConfig(
        method="lavt",
        backbone="swin_b",
        text_encoder="bert-base-uncased",
        size="full",
        image_size=image_size,
        vocab_size=arch.vocab_size,
        pretrained_text=tokenizer,
        options=options,
    )


def load_official(path: Path, image_size: int = 480, tokenizer: str = "bert-base-uncased") -> RISModel:
    """An official LAVT checkpoint as a :class:`RISModel` in eval mode (see the module docstring).

    Without ``bert_model`` in the file, the text encoder is a random BERT-base (a warning says so): use
    ``forward_words`` with your own word features. ``tokenizer`` is only recorded in ``model.cfg``.
    """
    path = Path(path)
    model_sd, bert_sd, args = read_official(path)
    if bert_sd is None:
        log.warning("%s has no bert_model: the text encoder is random (use forward_words)", path)
    return _build(model_sd, bert_sd, args, path, image_size, tokenizer)


def _build(
    model_sd: dict[str, torch.Tensor],
    bert_sd: dict[str, torch.Tensor] | None,
    args: Any,
    path: Path,
    image_size: int,
    tokenizer: str,
) -> RISModel:
    arch = infer_architecture(model_sd, bert_sd, args, path)
    cfg = model_config(arch, image_size, tokenizer)
    model = build_model(ModelConfig.from_dict({**cfg.to_dict(), "pretrained_text": None}))
    model.load_state_dict(convert_state(model_sd, bert_sd, model.state_dict(), path))
    model.cfg = cfg
    return model.eval()


def import_checkpoint(
    path: Path,
    out: Path,
    run_config: dict[str, Any] | None = None,
    image_size: int | None = None,
    tokenizer: str | None = None,
) -> dict[str, Any]:
    """Convert an official LAVT checkpoint into a ``ris`` checkpoint at ``out``; returns its run config.

    ``run_config`` (a DAG run's config) supplies run name, dataset, seed, tracking and ``train``; its
    ``model`` entry is replaced by the imported architecture (``tokenizer`` defaults to its
    ``pretrained_text``, else ``bert-base-uncased``). Without it, a minimal one is written.
    A checkpoint without ``bert_model`` is refused: its predictions would come from a random BERT.
    """
    path = Path(path)
    base = dict(run_config or {})
    size = int(image_size or base.get("model", {}).get("image_size") or 480)
    tokenizer = tokenizer or base.get("model", {}).get("pretrained_text") or "bert-base-uncased"
    model_sd, bert_sd, args = read_official(path)
    model = _build(model_sd, bert_sd, args, path, size, tokenizer)  # first: refuse bad keys by name
    if bert_sd is None:
        raise OfficialCheckpointError(
            f"{path}: no bert_model (the fine-tuned BERT); without it predictions would come from a random BERT"
        )
    train = {"image_size": size, "max_tokens": 20, **base.get("train", {})}
    config = {
        "run": f"lavt-{path.stem}",
        "dataset": "unknown",
        "seed": 0,
        **base,
        "model": model.cfg.to_dict(),
        "train": train,
        "imported_from": {"format": "lavt", "file": str(path.resolve())},
    }
    save_model_checkpoint(Path(out), config, model, None, model.cfg.vocab_size, epoch=-1, mlflow_run_id=None)
    return config
