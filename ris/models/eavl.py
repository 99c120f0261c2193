"""EAVL: Explicitly Align Vision and Language for Referring Image Segmentation (Yan et al., arXiv 2308.09779).

Only the abstract was at hand when this was written, so no section or equation numbers are cited; the
component names (Multi-Query Generator, transformer decoder, Multi-Mask Generator, Multi-Query
Estimator) are the paper's. What follows the paper (abstract):

* an LAVT-like encoder: image and text encoders with language fusion in the image encoder (here LAVT's
  stage-wise PWAM + gate, ``PWAMFusion`` from :mod:`ris.models.blocks`) and LAVT's top-down pixel
  decoder (:class:`TopDownDecoder`);
* a Vision-Language Aligner in the segmentation stage instead of a fixed-kernel classifier: multiple
  queries, each representing a different emphasis of the expression and generated from the input
  sentence *and* image (Multi-Query Generator), refined by a transformer decoder over the visual
  features, are turned into query-based (dynamic) convolution kernels that produce one mask each
  (Multi-Mask Generator); a Multi-Query Estimator scores the queries and the final result aggregates
  all masks.

Our reading (options in brackets):

* Multi-Query Generator (:class:`MultiQueryGenerator`): N learned probes; each first pools the
  stride-32 fused map by single-head attention (its own visual context), then, with that context,
  scores the words by single-head attention (one distribution over the words per query: its emphasis);
  query = attended word features + visual context, layer-normalised (in the manner of VLT's query
  generation); the probes also serve as the queries' positions in the decoder;
* transformer decoder: :class:`QueryDecoder` (cross-attention to the fused maps at strides 32/16/8 round
  robin, self-attention, FFN) [``query_layers`` 3, ``heads`` 8, ``ffn_dim`` 8 * hidden_dim,
  ``hidden_dim`` 256 at paper size, 64 tiny];
* Multi-Mask Generator: a linear layer turns each query into a 1x1 conv weight and bias over the pixel
  decoder output (:class:`DynamicMaskHead`, one layer);
* the masks are hypotheses of the image's objects, as CoupAlign's (:class:`ris.models.blocks.MaskHypotheses`;
  docs/masks.md): trained on the referred mask alone the queries became one query (pairwise cosine 1.00)
  with uniform scores, so each mask is matched to an object of the image [``proposal_weight`` 1.0] and the
  scores learn to pick the referred object's mask [``selection_weight`` 0.1]
  (:func:`ris.models.losses.hypothesis_losses`);
* Multi-Query Estimator: each mask's score is the cosine similarity of its pixels (the pixel decoder output
  averaged under the mask) with the sentence (projected masked mean of the words), divided by
  ``temperature`` [``estimator`` pixels; ``query``: a 2-layer MLP of each query alone, which picked the
  referred object less often, docs/masks.md]; softmax over the masks; output logits = the score-weighted sum
  of the per-query mask logits; the pixel-sentence contrast of CoupAlign (:func:`pixel_sentence_contrast`)
  trains the pixels that the scores read [``aux_weight`` 1.0, ``temperature`` 0.1];
* number of queries: ``cfg.num_masks`` when > 0, else option ``num_queries`` (default 8, our choice);
  setting both to different values is an error;
* loss: the shared mask loss (:meth:`RISModel.mask_loss`: LAVT's class-weighted BCE, plus Dice when the
  ``dice_weight`` option is set) on the aggregated logits, plus the contrast and the two hypothesis losses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ris.models.base import ModelConfig, RISModel
from ris.models.blocks import MLP, CrossAttention, MaskHypotheses, flatten_hw, masked_mean
from ris.models.losses import InstanceTargets
from ris.models.registry import register_method
from ris.options import CONTRAST_OPTIONS, HIDDEN_DIM, HYPOTHESIS_OPTIONS, PWAM_OPTIONS, QUERY_DECODER_OPTIONS, Option


class MultiQueryGenerator(nn.Module):
    """N queries, each a different, image-conditioned weighting of the words."""

    def __init__(self, num_queries: int, vis_dim: int, lang_dim: int, dim: int):
        super().__init__()
        self.probes = nn.Embedding(num_queries, dim)
        self.vis_pool = CrossAttention(dim, vis_dim, dim, heads=1)
        self.word_attn = CrossAttention(dim, lang_dim, dim, heads=1)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, vis: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (B, N, dim) and the probes (B, N, dim), used as the queries' positions downstream."""
        probes = self.probes.weight.expand(vis.shape[0], -1, -1)
        context = self.vis_pool(probes, flatten_hw(vis))
        emphasis = self.word_attn(probes + context, words, word_mask)
        return self.norm(emphasis + context), probes


@register_method("eavl")
class EAVL(RISModel):
    """EAVL on any staged backbone; options: see the module docstring."""

    OPTIONS = (
        *PWAM_OPTIONS,
        *HYPOTHESIS_OPTIONS,
        HIDDEN_DIM,
        *QUERY_DECODER_OPTIONS,
        Option("num_queries", int, None, "queries when num_masks is 0 (null: 8); must equal num_masks if both", ge=1),
        Option(
            "estimator",
            str,
            "pixels",
            "what scores a mask: its pixels against the sentence, or its query alone (an MLP)",
            choices=["pixels", "query"],
        ),
        *CONTRAST_OPTIONS,
    )

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        chans = self.backbone.channels
        dim = self.hidden_dim()
        option_n = self.option("num_queries")
        if cfg.num_masks > 0 and option_n is not None and option_n != cfg.num_masks:
            raise ValueError(
                f"model.num_masks={cfg.num_masks} and model.options.num_queries={option_n} disagree (set one)"
            )
        self.num_queries = int(cfg.num_masks if cfg.num_masks > 0 else (option_n or 8))
        if self.num_queries < 1:
            raise ValueError(f"EAVL needs at least one query, got {self.num_queries}")
        self.fusions = self.pwam_fusions()
        self.decoder = self.pixel_decoder()
        self.query_generator = MultiQueryGenerator(self.num_queries, chans[3], self.lang_dim, dim)
        self.query_decoder = self.build_query_decoder(dim)
        # Multi-Mask Generator (a dynamic 1x1 conv per query) and Multi-Query Estimator (a score per mask)
        pixels = self.option("estimator") == "pixels"
        self.hypotheses = MaskHypotheses(
            dim, self.decoder.hidden, 1, bias=True, score="pixels" if pixels else "estimator",
            temperature=self.option("temperature"), scorer=None if pixels else MLP(dim, dim, 1, layers=2),
        )  # fmt: skip
        self.sentence_proj = nn.Linear(self.lang_dim, self.decoder.hidden)
        self.proposal_weight = self.option("proposal_weight")
        self.selection_weight = self.option("selection_weight")

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        words = self.encode_text(input_ids, attention_mask)
        feats, _ = self.encode(images, words, attention_mask, self.fusions)
        pix = self.decoder(feats)
        q, probes = self.query_generator(feats[3], words, attention_mask)
        q = self.query_decoder(q, feats, probes)
        sentence = self.sentence_proj(masked_mean(words, attention_mask))
        return {"pixel_embed": pix, "sentence": sentence, **self.hypotheses(q, pix, sentence)}

    def loss(
        self, outputs: dict[str, Any], target: torch.Tensor, instances: InstanceTargets | None = None
    ) -> dict[str, torch.Tensor]:
        mask = self.mask_loss(outputs["logits"], target)
        losses = self.add_pixel_sentence_contrast({"loss": mask, "mask": mask.detach()}, outputs, target)
        return self.add_hypothesis_losses(losses, outputs, instances)
