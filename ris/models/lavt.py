"""LAVT: Language-Aware Vision Transformer (Yang et al., CVPR 2022; official code yz93/LAVT-RIS).

Follows the official architecture:

* after every backbone stage, a pixel-word attention module (PWAM, :class:`PixelWordAttention`)
  turns the stage output and the BERT word features into a multimodal map F_i (paper Sec. 3.2);
* a language gate (:class:`LanguageGate`) adds F_i back into the visual stream that
  feeds the next stage (paper Sec. 3.3; the official code fuses *before* Swin's patch merging);
* F_i, layer-normalised, goes to the top-down decoder (:class:`TopDownDecoder`, official
  ``mask_predictor.py``) whose 1/4-resolution output a 1x1 conv turns into two class scores;
* loss: cross-entropy with class weights 0.9 (background) / 1.1 (foreground), official ``train.py``.

With ``swin_b`` the network is the official one, key for key (the Swin follows the official window
semantics, :class:`ris.models.backbones.OfficialSwinBlock`): ``ris.interop.lavt`` imports the authors'
checkpoints, and ``tests/test_lavt_interop.py`` matches the official code's outputs within 1e-4.

Our reading: the two class scores are returned as one foreground logit (their difference), which leaves
the loss and the argmax prediction unchanged; fusion also runs on ResNet/Darknet stages (CoupAlign's
supplementary Table 1 evaluates "LAVT-ResNet101" without describing it; this is the direct transfer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ris.models.base import ModelConfig, RISModel
from ris.models.registry import register_method
from ris.options import PWAM_OPTIONS


@register_method("lavt")
class LAVT(RISModel):
    """LAVT on any staged backbone; options: ``fusion_heads`` (1), ``fusion_dropout`` (0.0)."""

    OPTIONS = PWAM_OPTIONS

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.fusions = self.pwam_fusions()
        self.decoder = self.pixel_decoder()
        self.classifier = nn.Conv2d(self.decoder.hidden, 2, 1)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        words, _ = self.text(input_ids, attention_mask)
        return self.forward_words(images, words, attention_mask)

    def forward_words(self, images: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> dict[str, Any]:
        """``logits`` (B, 1, H/4, W/4), and the official model's intermediate outputs: ``features`` (the four
        LayerNorm-ed PWAM maps handed to the decoder) and ``scores`` (the two class scores at 1/4 size).
        ``words`` are the text encoder's features (the option ``word_dim`` projects them here)."""
        feats, _ = self.encode(images, self.project_words(words), word_mask, self.fusions)
        scores = self.classifier(self.decoder(feats))
        return {"logits": scores[:, 1:2] - scores[:, 0:1], "scores": scores, "features": feats}
