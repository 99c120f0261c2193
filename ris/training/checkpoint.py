"""Checkpoints that carry their own configuration (and vocabulary), written atomically and durably.

``last.pt`` (for exact resume) also holds the optimizer, LR scheduler, grad scaler, every RNG state, the
data-order position and the MLflow run id (:func:`ris.training.run.resume_state`); ``best.pt`` (published as
``model.pt``) holds what evaluation needs. Both load with ``weights_only=True``: plain values and tensors, no
pickled code.
"""

from __future__ import annotations

import os
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
    """Write ``state`` (with the format marker) to ``path`` atomically.

    The data reaches the disk (fsync) before the rename, and the rename before we return, so a killed
    job or a crashed node leaves either the previous checkpoint or the new one, never a torn file.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    if not mcfg.external_text:
        mcfg.pretrained_text = None  # fine-tuned text weights are in the checkpoint: nothing to download
    model = build_model(mcfg)  # a frozen pretrained text encoder loads from its package/folder (offline)
    model.load_checkpoint_state(ckpt["model"])
    model.eval()
    return model, tokenizer, config


def save_model_checkpoint(
    path: Path,
    config: dict[str, Any],
    model: RISModel,
    vocab: list[str] | None,
    vocab_size: int,
    **extra: Any,
) -> None:
    """Write a model checkpoint that ``ris evaluate``, ``ris predict`` and the DAG read (as ``model.pt``).

    ``config`` is the run config (its ``model`` entry rebuilds the network); ``vocab`` is the vocabulary
    built from the training sentences, or None when the tokenizer is ``config["model"]["pretrained_text"]``.
    """
    state = {"config": config, "vocab": vocab, "vocab_size": vocab_size, "model": model.checkpoint_state()}
    save_checkpoint(path, {**state, **extra})
