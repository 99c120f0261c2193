"""CoupAlign: Coupling Word-Pixel with Sentence-Mask Alignments (Zhang et al., NeurIPS 2022).

Only the abstract and the caption of Fig. 2 were at hand when this was written, so no section or
equation numbers are cited. What follows the paper (abstract and Fig. 2; notation of Fig. 2):

* Word-Pixel Alignment (WPA) at every encoder stage, an early and *bidirectional* fusion of words and
  pixels inside the vision and language encoders: here :class:`WordPixelAlignment`;
* a mask generator that turns the word-pixel aligned features S_o into N mask embeddings Q_o from N
  queries, and pixel embeddings Y; Q_o against Y gives N mask proposals Y_N, which "hypothesize possible
  objects";
* Sentence-Mask Alignment (SMA): "the masks are weighted by the sentence embedding L_g to localize the
  referred object, and finally projected back to aggregate the pixels for the target" (the prediction M);
* an auxiliary loss contrasting foreground and background pixels, added to the segmentation loss.

Our reading (choices the text does not pin down; options in brackets; what was measured for each choice:
``docs/masks.md``, demo, 3 seeds):

* WPA, language-to-vision: LAVT's PWAM + language gate (:class:`ris.models.blocks.PWAMFusion`)
  [``fusion_heads`` 1, ``fusion_dropout`` 0.0]; vision-to-language: the words cross-attend to the stage's
  pixels (residual, post-norm :class:`AttentionLayer`) [``wpa_heads`` 8] and go to the next stage through a
  learned gate that starts closed, ``words + tanh(g) (update - words)`` [``word_gate`` true: without it the
  update held the grounding back, CoupAlign Swin N = 100 val mIoU 55.3 +- 2.4 without, 63.5 +- 0.8 with].
  BERT runs once up front; the word updates live in the fusion modules, not between BERT layers;
* pixel decoder: LAVT's :class:`TopDownDecoder`; pixel embeddings Y: a 1x1 conv of its output to
  ``hidden_dim`` [256 at paper size, 64 tiny];
* mask generator: Mask2Former-style :class:`QueryDecoder` (no masked attention, no per-layer deep
  supervision) [``query_layers`` 3, ``heads`` 8, ``ffn_dim`` 8 * hidden_dim], learned query features and
  positions; masks: :class:`ris.models.blocks.MaskHypotheses` (a 3-layer MLP turns each query into a mask
  embedding, dotted with Y);
* the masks are hypotheses of the image's objects: trained on the referred mask alone, the N masks
  collapse into one mask with uniform weights (docs/masks.md), so each mask is matched one-to-one to the
  objects of the image (``instances.json``; Hungarian matching, Mask2Former's BCE + Dice + objectness)
  and learns its object [``proposal_weight`` 1.0], and the SMA weights learn to pick the mask matched to
  the referred object [``selection_weight`` 0.1] (:func:`ris.models.losses.hypothesis_losses`);
* SMA weights: softmax over the N masks of the cosine similarity between L_g and the mask's pixels (Y
  averaged under the mask), divided by ``temperature`` [``sma_score`` pixels; ``query``: Q_o . L_g / sqrt(d),
  which picked the referred object less often: val mIoU 51.0 +- 4.5]; L_g = linear projection of the masked
  mean of the words after the WPA updates; the prediction M is the weighted sum of the N mask logits;
* ``num_masks`` = N comes from ``cfg.num_masks``. N = 0 is the ablation without SMA: no queries, no
  query decoder, no mask head; the logits come from a 1x1 conv on the pixel decoder output, like LAVT;
* auxiliary loss: pixel-level InfoNCE (:func:`ris.models.losses.pixel_sentence_contrast`) between the
  L2-normalised Y and L_g, each foreground pixel a positive against all background pixels of its image
  [``temperature`` 0.1, ``aux_weight`` 1.0: it also trains what the SMA scores the masks with; 0.1 left one
  seed in three at the random-object level]; total loss = the shared mask loss on M (:meth:`RISModel.mask_loss`)
  + aux_weight * aux + proposal_weight * proposal + selection_weight * selection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ris.models.base import ModelConfig, RISModel
from ris.models.blocks import AttentionLayer, MaskHypotheses, PWAMFusion, flatten_hw, masked_mean
from ris.models.losses import InstanceTargets
from ris.models.registry import register_method
from ris.options import CONTRAST_OPTIONS, HIDDEN_DIM, HYPOTHESIS_OPTIONS, PWAM_OPTIONS, QUERY_DECODER_OPTIONS, Option


class WordPixelAlignment(nn.Module):
    """One WPA stage: pixels gather words (PWAM + gate) and words gather pixels (cross-attention)."""

    def __init__(
        self,
        vis_dim: int,
        lang_dim: int,
        fusion_heads: int,
        wpa_heads: int,
        dropout: float,
        lang_norm: str,
        word_gate: bool = False,
    ):
        super().__init__()
        self.l2v = PWAMFusion(vis_dim, lang_dim, fusion_heads, dropout, lang_norm)
        self.v2l = AttentionLayer(lang_dim, wpa_heads, dropout, kv_dim=vis_dim)
        #: ``words + tanh(g) (update - words)``, g = 0 at the start: the words change only as far as training wants
        self.word_gate = nn.Parameter(torch.zeros(())) if word_gate else None

    def forward(
        self, vis: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vis_next, out, _ = self.l2v(vis, words, word_mask)
        words_next = self.v2l(words, flatten_hw(vis))
        if self.word_gate is not None:
            words_next = words + torch.tanh(self.word_gate) * (words_next - words)
        return vis_next, out, words_next


@register_method("coupalign")
class CoupAlign(RISModel):
    """CoupAlign; N = ``cfg.num_masks`` (0: no SMA). Options: see the module docstring."""

    OPTIONS = (
        *PWAM_OPTIONS,
        *HYPOTHESIS_OPTIONS,
        Option(
            "sma_score",
            str,
            "pixels",
            "what the sentence embedding is compared with: each mask's pixels or its query",
            choices=["pixels", "query"],
        ),
        HIDDEN_DIM,
        *QUERY_DECODER_OPTIONS,
        Option("wpa_heads", int, 8, "attention heads of the words' cross-attention to the pixels (WPA)", ge=1),
        Option("word_gate", bool, True, "a learned gate (closed at the start) on the WPA's update of the words"),
        *CONTRAST_OPTIONS,
    )

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        chans = self.backbone.channels
        dim = self.hidden_dim()
        self.num_masks = int(cfg.num_masks)
        if self.num_masks < 0:
            raise ValueError(f"num_masks must be >= 0, got {self.num_masks}")
        if self.num_masks:
            self.proposal_weight = self.option("proposal_weight")
            self.selection_weight = self.option("selection_weight")
        self.fusions = nn.ModuleList(
            WordPixelAlignment(
                c,
                self.lang_dim,
                self.option("fusion_heads"),
                self.option("wpa_heads"),
                self.option("fusion_dropout"),
                self.lang_norm,
                self.option("word_gate"),
            )
            for c in chans
        )
        self.decoder = self.pixel_decoder()
        self.pixel_embed = nn.Conv2d(self.decoder.hidden, dim, 1)
        self.sentence_proj = nn.Linear(self.lang_dim, dim)
        if self.num_masks:
            self.query_feat = nn.Embedding(self.num_masks, dim)
            self.query_pos = nn.Embedding(self.num_masks, dim)
            self.query_decoder = self.build_query_decoder(dim)
            self.hypotheses = MaskHypotheses(
                dim,
                dim,
                mask_layers=3,
                bias=False,
                score=self.option("sma_score"),
                temperature=self.option("temperature"),
            )
        else:
            self.classifier = nn.Conv2d(self.decoder.hidden, 1, 1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        words = self.encode_text(input_ids, attention_mask)
        feats, words = self.encode(images, words, attention_mask, self.fusions)
        pix = self.decoder(feats)
        emb = self.pixel_embed(pix)
        sentence = self.sentence_proj(masked_mean(words, attention_mask))
        out: dict[str, Any] = {"pixel_embed": emb, "sentence": sentence}
        if not self.num_masks:
            out["logits"] = self.classifier(pix)
            return out
        b = images.shape[0]
        q = self.query_decoder(self.query_feat.weight.expand(b, -1, -1), feats, self.query_pos.weight.expand(b, -1, -1))
        out.update(self.hypotheses(q, emb, sentence))
        return out

    def loss(
        self, outputs: dict[str, Any], target: torch.Tensor, instances: InstanceTargets | None = None
    ) -> dict[str, torch.Tensor]:
        mask = self.mask_loss(outputs["logits"], target)
        losses = self.add_pixel_sentence_contrast({"loss": mask, "mask": mask.detach()}, outputs, target)
        return self.add_hypothesis_losses(losses, outputs, instances)
