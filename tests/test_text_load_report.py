"""transformers' "BertModel LOAD REPORT": silent for the packaged MiniLM's unused pooler, kept for real problems."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import BertConfig, BertModel

from ris.models.text import bert_base_uncased
from ris.text_weights import is_packaged

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
MISSING = "encoder.layer.0.output.dense.bias"


@contextmanager
def transformers_log() -> Iterator[list[str]]:
    """Every message the ``transformers`` loggers emit meanwhile (they do not propagate to the root logger)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("transformers"), Collect(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _load(name: str, capfd) -> str:
    """Everything loading ``name`` as the text encoder writes to stdout, stderr and transformers' logs."""
    capfd.readouterr()
    with transformers_log() as messages:
        enc = bert_base_uncased("tiny", 0, name)
    out, err = capfd.readouterr()
    assert enc.bert.pooler is None
    return "\n".join([out, err, *messages])


def _save_tiny_bert(folder: Path, drop: str | None = None) -> Path:
    """A tiny BERT *with* its pooler saved to ``folder``; ``drop`` leaves that weight out of the file."""
    bert = BertModel(BertConfig(vocab_size=30, max_position_embeddings=16, **TINY), add_pooling_layer=True)
    state = {k: v for k, v in bert.state_dict().items() if k != drop}
    bert.save_pretrained(folder, state_dict=state)
    return folder


def test_packaged_minilm_loads_without_report(capfd):
    assert is_packaged("all-MiniLM-L6-v2")
    text = _load("all-MiniLM-L6-v2", capfd)
    assert "LOAD REPORT" not in text and "pooler" not in text
    assert "Loading weights" not in text  # nor the per-tensor progress bar


def test_own_weights_with_a_missing_weight_are_reported(tmp_path, capfd):
    text = _load(str(_save_tiny_bert(tmp_path / "bert", drop=MISSING)), capfd)
    assert "LOAD REPORT" in text and MISSING in text and "MISSING" in text
    assert "pooler" not in text  # the pooler we build without is never a problem


def test_own_weights_with_an_unexpected_weight_are_reported(tmp_path, capfd):
    folder = _save_tiny_bert(tmp_path / "bert")
    bert = BertModel.from_pretrained(folder)
    state = {**bert.state_dict(), "encoder.layer.0.extra.weight": bert.pooler.dense.weight.clone()}
    bert.save_pretrained(folder, state_dict=state)
    text = _load(str(folder), capfd)
    assert "LOAD REPORT" in text and "encoder.layer.0.extra.weight" in text and "UNEXPECTED" in text


def test_own_weights_with_only_the_pooler_load_quietly(tmp_path, capfd):
    text = _load(str(_save_tiny_bert(tmp_path / "bert")), capfd)
    assert "LOAD REPORT" not in text
