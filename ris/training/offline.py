"""Rehearsal runs without the Hugging Face Hub: the paper's architectures with random weights, BERT tokenised with
the bert-base-uncased vocabulary of a packaged model (config.yaml ``rehearsal``; docs/scales.md).

A rehearsal runs the paper preset's models, which name hub weights (timm's ImageNet backbones, BERT's
``bert-base-uncased``). Where the hub answers, they are downloaded as in a real paper run. Where it does not (an
offline laptop, a compute node without internet, ``HF_HUB_OFFLINE=1``), :func:`resolve_hub_weights` gives the
run random weights of the same architecture instead and says so: a warning in the run's log, the run config's
``rehearsal.random_weights`` (in ``config.json`` and every checkpoint) and the MLflow tag ``random_weights``;
the tokenizer is then the packaged model's (``rehearsal.vocabulary``: the bert-base-uncased vocabulary), stored
in the checkpoints like a demo vocabulary, so evaluation needs no hub either. One request decides (the hub's
own retries take ~25 s per file offline). A run that is not a rehearsal never falls back: there a missing weight
file is an error.
"""

from __future__ import annotations

import copy
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ris.data.tokenizer import load_tokenizer
from ris.text_weights import is_packaged

log = logging.getLogger(__name__)

__all__ = ["HUB_TIMEOUT_S", "hub_parts", "hub_reachable", "packaged_vocabulary", "resolve_hub_weights"]

HUB_TIMEOUT_S = 5.0


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers one HEAD request (its endpoint: ``HF_ENDPOINT``); ``HF_HUB_OFFLINE``
    counts as unreachable."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # an HTTP status is an answer
    except (OSError, ValueError):
        return False
    return True


def hub_parts(model: dict[str, Any]) -> list[str]:
    """Which weights of a run config's ``model`` come from the hub: ``backbone`` (``pretrained_backbone: true``,
    timm) and ``text`` (a hub id: neither a local folder nor a packaged model)."""
    parts = ["backbone"] if model.get("pretrained_backbone") is True else []
    text = model.get("pretrained_text")
    if text and not is_packaged(text) and not Path(text).is_dir():
        parts.append("text")
    return parts


def resolve_hub_weights(cfg: dict[str, Any], reachable: Callable[[], bool] = hub_reachable) -> dict[str, Any]:
    """A rehearsal's run config with random weights for its hub parts where the hub is unreachable (a copy);
    ``cfg`` itself otherwise (not a rehearsal, no hub weights, or the hub answers)."""
    if not cfg.get("rehearsal"):
        return cfg
    parts = hub_parts(cfg["model"])
    if not parts or reachable():
        return cfg
    out = copy.deepcopy(cfg)
    if "backbone" in parts:
        out["model"]["pretrained_backbone"] = False
    if "text" in parts:
        out["model"]["pretrained_text"] = None
    out["rehearsal"]["random_weights"] = parts
    out["tracking"]["tags"]["random_weights"] = f"{','.join(parts)} (hub unreachable)"
    log.warning(
        "rehearsal: the Hugging Face Hub is unreachable: RANDOM weights for the %s (same architecture: %s%s)%s",
        " and ".join(parts), cfg["model"]["backbone"], ", BERT-base" if "text" in parts else "",
        f"; tokenizer: the bert-base-uncased vocabulary of {cfg['rehearsal']['vocabulary']}" if "text" in parts else "",
    )  # fmt: skip
    return out


def packaged_vocabulary(cfg: dict[str, Any]) -> list[str] | None:
    """Tokens (by id) of the ``rehearsal.vocabulary`` model's tokenizer where a rehearsal's text weights are random
    (:func:`resolve_hub_weights`), else None."""
    settings = cfg.get("rehearsal") or {}
    if "text" not in settings.get("random_weights", []):
        return None
    ids = load_tokenizer(settings["vocabulary"], None).get_vocab()
    return sorted(ids, key=ids.__getitem__)
