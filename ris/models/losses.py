"""Losses shared by the methods.

Every model predicts one foreground logit per pixel. LAVT's two-class cross-entropy with class weights
(0.9 background, 1.1 foreground, PyTorch's weighted mean) equals a binary cross-entropy on the logit
difference with the same per-pixel weights, normalised by the sum of weights: that is what
:func:`weighted_bce` computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, K, h, w) logits to the target size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def weighted_bce(
    logits: torch.Tensor, target: torch.Tensor, fg_weight: float = 1.1, bg_weight: float = 0.9
) -> torch.Tensor:
    """Class-weighted BCE of (B, 1, h, w) or (B, h, w) logits against a (B, H, W) 0/1 target."""
    if logits.dim() == 4:
        logits = resize_logits(logits, target.shape[-2:]).squeeze(1)
    t = target.to(logits.dtype)
    w = t * fg_weight + (1.0 - t) * bg_weight
    per_pixel = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return (w * per_pixel).sum() / w.sum()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, averaged; logits (B, 1, h, w) are resized to the target."""
    if logits.dim() == 4:
        logits = resize_logits(logits, target.shape[-2:]).squeeze(1)
    p = logits.sigmoid().flatten(1)
    t = target.to(p.dtype).flatten(1)
    return (1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def pixel_sentence_contrast(
    pixels: torch.Tensor, sentence: torch.Tensor, target: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """InfoNCE contrasting foreground with background pixels against the sentence (CoupAlign's aux loss).

    ``pixels`` (B, C, h, w) and ``sentence`` (B, C) are L2-normalised; their cosine similarity map,
    divided by ``temperature``, is resized to the (B, H, W) 0/1 target. Every foreground pixel is a
    positive whose negatives are all the background pixels of its image:
    ``-log(exp(s_p) / (exp(s_p) + sum_n exp(s_n)))``, averaged over the foreground pixels of an image,
    then over the images that have any foreground.
    """
    p = F.normalize(pixels, dim=1)
    s = F.normalize(sentence, dim=1)
    sim = torch.einsum("bchw,bc->bhw", p, s).unsqueeze(1) / temperature
    sim = resize_logits(sim, target.shape[-2:]).flatten(1)
    fg = target.flatten(1).bool()
    # a large finite stand-in for -inf keeps gradients finite when an image has no background pixel
    neg = torch.logsumexp(sim.masked_fill(fg, -1e4), dim=1, keepdim=True)
    per_pixel = torch.logaddexp(sim, neg) - sim
    n_fg = fg.sum(1)
    per_image = (per_pixel * fg).sum(1) / n_fg.clamp(min=1)
    has_fg = (n_fg > 0).to(per_image.dtype)
    return (per_image * has_fg).sum() / has_fg.sum().clamp(min=1.0)
