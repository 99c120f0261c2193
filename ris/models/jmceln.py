"""JMCELN: Joint Mask Contextual Embedding Learning and Progressive Alignment Network (EMNLP 2023).

Only the paper's abstract is public. It names a Learnable Contextual Embedding that carries context
across a cascade of predictions, a Progressive Alignment Network that uses each stage's prediction to
align the next and reduce the inconsistency between stages, and a multi-stage (cascaded) prediction.
**Everything below is our reading of that abstract**; no section, equation or setting of the paper is
followed because none is available to us.

* encoder and pixel decoder: LAVT's stage-wise PWAM + gate (``PWAMFusion`` from :mod:`ris.models.blocks`)
  and :class:`TopDownDecoder` [``fusion_heads`` 1, ``fusion_dropout`` 0.0];
* Learnable Contextual Embedding: K learned vectors of width ``hidden_dim`` [``context_tokens`` 4,
  ``hidden_dim`` 256 at paper size, 64 tiny]; at each stage they read, by cross-attention, the
  projected words plus the region of the current prediction (pixel features mask-pooled with the
  previous stage's sigmoid, a plain average at stage 1), and a GRU cell updates them with what they read;
* each stage (:class:`ContextStage`, ``num_stages`` [3] of them, no weight sharing) predicts a mask:
  every contextual vector becomes a dynamic 1x1 kernel (2-layer generator) over the stage's pixel features,
  and the K masks are weighted by a softmax over K of the cosine similarity between each mask's pixels (the
  stage's features averaged under the mask) and the projected sentence (masked mean of the words), divided
  by ``temperature`` (:class:`ris.models.blocks.MaskHypotheses`, score "pixels");
* the K masks of the last stage are hypotheses of the image's objects, as CoupAlign's (docs/masks.md):
  trained on the referred mask alone they were one mask (1.0 distinct masks per sample), so they are matched
  to the image's objects [``proposal_weight`` 1.0] and the weights learn to pick the referred object's mask
  [``selection_weight`` 0.1] (:func:`ris.models.losses.hypothesis_losses`); CoupAlign's pixel-sentence
  contrast trains the last stage's features that the weights read [``aux_weight`` 1.0, ``temperature`` 0.1].
  With K = 4, an image of more objects has its referred object and its 3 largest others matched;
* Progressive Alignment: the previous stage's probability filters the current stage's features,
  ``refine(pixels * (1 + p_prev))`` (3x3 conv-BN-ReLU per stage); gradients flow through ``p_prev``;
* deep supervision: the shared mask loss (:meth:`RISModel.mask_loss`) on every stage's logits,
  combined with ``stage_weights`` [all 1.0] normalised by their sum; the final logits are the last stage's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ris.models.base import ModelConfig, RISModel
from ris.models.blocks import CrossAttention, MaskHypotheses, conv_bn_relu, mask_pool, masked_mean
from ris.models.losses import InstanceTargets
from ris.models.registry import register_method
from ris.options import CONTRAST_OPTIONS, HIDDEN_DIM, HYPOTHESIS_OPTIONS, PWAM_OPTIONS, Option


class ContextStage(nn.Module):
    """One cascade stage: filter by the previous prediction, update the context, predict a mask."""

    def __init__(self, pixel_dim: int, dim: int, heads: int, temperature: float, objectness: bool):
        super().__init__()
        self.refine = conv_bn_relu(pixel_dim, dim)
        self.read = CrossAttention(dim, dim, dim, heads)
        self.update = nn.GRUCell(dim, dim)
        self.hypotheses = MaskHypotheses(dim, dim, 2, bias=True, score="pixels", temperature=temperature)
        if not objectness:  # only the last stage's masks are matched to objects
            self.hypotheses.objectness = None

    def forward(
        self,
        pixels: torch.Tensor,
        context: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        sentence: torch.Tensor,
        prev_logits: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The stage's mask hypotheses (:class:`MaskHypotheses`: ``logits``, ``masks``, weights, ...); its
        updated context are the ``queries``."""
        prob = None if prev_logits is None else prev_logits.sigmoid()
        feats = self.refine(pixels if prob is None else pixels * (1.0 + prob))
        region = mask_pool(feats, prob).unsqueeze(1)
        mem = torch.cat([words, region], dim=1)
        mem_mask = torch.cat([word_mask.bool(), word_mask.new_ones(word_mask.shape[0], 1).bool()], dim=1)
        b, k, d = context.shape
        read = self.read(context, mem, mem_mask)
        context = self.update(read.reshape(b * k, d), context.reshape(b * k, d)).view(b, k, d)
        return {"pixel_embed": feats, **self.hypotheses(context, feats, sentence)}


@register_method("jmceln")
class JMCELN(RISModel):
    """JMCELN as we read its abstract; options: see the module docstring."""

    OPTIONS = (
        *PWAM_OPTIONS,
        *HYPOTHESIS_OPTIONS,
        HIDDEN_DIM,
        Option("num_stages", int, 3, "stages of the cascade", ge=1),
        Option("stage_weights", list, None, "loss weight of each stage (null: all 1.0)", items=float, ge=0),
        Option("context_tokens", int, 4, "learnable contextual embeddings (K)", ge=1),
        Option("heads", int, 8, "attention heads of each stage's read of words and region", ge=1),
        *CONTRAST_OPTIONS,
    )

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        dim = self.hidden_dim()
        stages, given = self.option("num_stages"), self.option("stage_weights")
        weights = [1.0] * stages if given is None else [float(w) for w in given]
        if len(weights) != stages or sum(weights) <= 0:
            raise ValueError(
                f"model.options.stage_weights {weights}: expected {stages} values (num_stages) with a positive sum"
            )
        self.stage_weights = weights
        self.proposal_weight = self.option("proposal_weight")
        self.selection_weight = self.option("selection_weight")
        self.fusions = self.pwam_fusions()
        self.decoder = self.pixel_decoder()
        self.context = nn.Parameter(torch.randn(self.option("context_tokens"), dim))
        self.word_proj = nn.Linear(self.lang_dim, dim)
        self.sentence_proj = nn.Linear(self.lang_dim, dim)
        self.stages = nn.ModuleList(
            ContextStage(self.decoder.hidden, dim, self.option("heads"), self.option("temperature"), i == stages - 1)
            for i in range(stages)
        )

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        words = self.encode_text(input_ids, attention_mask)
        feats, words = self.encode(images, words, attention_mask, self.fusions)
        pixels = self.decoder(feats)
        sentence = self.sentence_proj(masked_mean(words, attention_mask))
        words = self.word_proj(words)
        context = self.context.expand(images.shape[0], -1, -1)
        out: dict[str, Any] = {"logits": None}
        all_logits = []
        for stage in self.stages:
            out = stage(pixels, context, words, attention_mask, sentence, out["logits"])
            context = out["queries"]
            all_logits.append(out["logits"])
        return {**out, "stage_logits": all_logits, "sentence": sentence}

    def loss(
        self, outputs: dict[str, Any], target: torch.Tensor, instances: InstanceTargets | None = None
    ) -> dict[str, torch.Tensor]:
        parts = [self.mask_loss(lg, target) for lg in outputs["stage_logits"]]
        total = sum(w * p for w, p in zip(self.stage_weights, parts, strict=True)) / sum(self.stage_weights)
        losses = {
            "loss": total,
            "mask": parts[-1].detach(),
            **{f"stage{i + 1}": p.detach() for i, p in enumerate(parts)},
        }
        losses = self.add_pixel_sentence_contrast(losses, outputs, target)
        return self.add_hypothesis_losses(losses, outputs, instances)
