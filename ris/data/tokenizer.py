"""Tokenizers for the text encoder.

At paper scale the BERT tokenizer comes from ``from_pretrained`` (hub name or local folder). At demo
scale nothing is downloaded: a WordPiece vocabulary is built from the training sentences (every word
becomes a token) when training starts; checkpoints carry it, so a model can be used without the data.

Note (transformers 5): ``BertTokenizer(vocab_file=...)`` silently ignores the file and maps every word to
[UNK]; we pass ``vocab=`` (a token -> id dict), which works on 4.x and 5.x alike.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable

import torch
from transformers import BertTokenizer

from ris.text_weights import resolve_text_weights

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORD = re.compile(r"\w+|[^\w\s]")


def build_vocab(sentences: Iterable[str]) -> list[str]:
    """Special tokens followed by every lower-cased word/punctuation token of the sentences, sorted."""
    words = {w for s in sentences for w in _WORD.findall(s.lower())}
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def tokenizer_from_vocab(vocab: list[str]) -> BertTokenizer:
    """A BERT WordPiece tokenizer over an explicit vocabulary (no download)."""
    return BertTokenizer(vocab=OrderedDict((tok, i) for i, tok in enumerate(vocab)), do_lower_case=True)


def load_tokenizer(name_or_path: str | None, vocab: list[str] | None) -> BertTokenizer:
    """Vocabulary-built tokenizer when ``vocab`` is given, else ``BertTokenizer.from_pretrained``."""
    if vocab is not None:
        return tokenizer_from_vocab(vocab)
    if not name_or_path:
        raise ValueError("a tokenizer needs either a vocabulary or a pretrained name/path")
    return BertTokenizer.from_pretrained(resolve_text_weights(name_or_path))


def encode(tokenizer: BertTokenizer, sentences: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded/truncated to ``max_tokens`` (LAVT uses 20)."""
    enc = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()
