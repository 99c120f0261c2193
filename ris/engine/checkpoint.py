"""Checkpoints that carry their own configuration (and vocabulary), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ris.data.tokenizer import load_tokenizer
from ris.models import ModelConfig, RISModel, build_model
from ris.utils import atomic_path

FORMAT = "ris-checkpoint-v1"


class CheckpointError(ValueError):
    """A file is not a ris checkpoint (or of another format version)."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (with the format marker) to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint, checking it is one of ours (weights only: no code is unpickled)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable ris checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected a checkpoint of format {FORMAT!r}, found {found!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[RISModel, Any, dict[str, Any]]:
    """Rebuild (model in eval mode, tokenizer, run config) from a loaded checkpoint."""
    config = ckpt["config"]
    mcfg = ModelConfig.from_dict({**config["model"], "vocab_size": ckpt["vocab_size"]})
    mcfg.pretrained_backbone = False  # the weights come from the checkpoint
    if mcfg.pretrained_text and ckpt.get("vocab") is None:
        tokenizer = load_tokenizer(mcfg.pretrained_text, None)
    else:
        tokenizer = load_tokenizer(None, ckpt.get("vocab"))
    mcfg.pretrained_text = None
    model = build_model(mcfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, tokenizer, config
