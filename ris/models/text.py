"""HuggingFace BERT text encoders.

``full`` is the ``bert-base-uncased`` architecture: weights via ``from_pretrained`` when ``pretrained``
names a hub id or a local folder, random init otherwise. ``tiny`` is a small random-init BERT (2 layers,
hidden 64) over the vocabulary built from the training sentences.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from ris.models.blocks import masked_mean
from ris.models.registry import register_text_encoder

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
BERT_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


class TextEncoder(nn.Module):
    """Word features (B, L, D) and a sentence feature (B, D) (masked mean of the words)."""

    def __init__(self, bert: BertModel):
        super().__init__()
        self.bert = bert
        self.dim = int(bert.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        words = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return words, masked_mean(words, attention_mask)


@register_text_encoder("bert-base-uncased")
def bert_base_uncased(size: str, vocab_size: int, pretrained: str | None = None) -> TextEncoder:
    """BERT-base (LAVT's text encoder) or its tiny sibling; ``pretrained``: hub id or local folder."""
    if size == "full" and pretrained:
        return TextEncoder(BertModel.from_pretrained(pretrained, add_pooling_layer=False))
    dims = BERT_BASE if size == "full" else BERT_TINY
    config = BertConfig(vocab_size=vocab_size, max_position_embeddings=512 if size == "full" else 64, **dims)
    return TextEncoder(BertModel(config, add_pooling_layer=False))
