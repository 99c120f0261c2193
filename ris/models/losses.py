"""Losses shared by the methods.

Every model predicts one foreground logit per pixel. LAVT's two-class cross-entropy with class weights
(0.9 background, 1.1 foreground, PyTorch's weighted mean) equals a binary cross-entropy on the logit
difference with the same per-pixel weights, normalised by the sum of weights: that is what
:func:`weighted_bce` computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


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


# ---------------------------------------------------------------------------------------------------------
# Mask hypotheses (CoupAlign's N masks, EAVL's queries, JMCELN's contextual masks; blocks.MaskHypotheses).
#
# A head that predicts sum_i w_i m_i from N masks m_i and sentence weights w_i, trained on the referred mask
# alone, collapses: the loss sees only the weighted mean of the masks, nothing rewards two masks for
# differing, and within a few dozen steps the N masks are one mask with uniform weights (docs/masks.md).
# What makes the masks hypotheses here (our reading of CoupAlign's "mask proposals ... hypothesize possible
# objects"; Mask2Former's set prediction, not the papers' code, which is not public):
# * proposal loss: the N masks are matched one-to-one to the objects of the image (every instance of
#   instances.json; Hungarian matching, cost = mask BCE + Dice - objectness probability, as Mask2Former);
#   a matched mask learns its object (BCE + Dice at the mask logits' resolution) and an objectness logit per
#   mask learns object / no object (no-object terms weighted 0.1);
# * selection loss: the sentence's weight logits learn, by cross-entropy, to pick the mask matched to the
#   referred object.
# The prediction stays the weighted sum of the masks: the losses only say what the masks and weights are for.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class InstanceTargets:
    """The objects of each image of a batch, at the mask logits' resolution.

    ``masks`` (B, K, h, w) 0/1, padded with empty masks; ``count`` (B,) real objects per image;
    ``target`` (B,) the referred object's index (-1: not among them, e.g. a crowd region).
    """

    masks: torch.Tensor
    count: torch.Tensor
    target: torch.Tensor

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor], device: torch.device) -> InstanceTargets:
        return cls(
            batch["instances"].to(device, non_blocking=True),
            batch["num_instances"].to(device),
            batch["target_instance"].to(device),
        )


def _objects_at(objects: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, H, W) 0/1 objects as float coverage at ``size`` (area averaging: a small object stays visible)."""
    objects = objects.float()
    if tuple(objects.shape[-2:]) == tuple(size):
        return objects
    return F.adaptive_avg_pool2d(objects, size)


def _pair_costs(logits: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Pairwise mean BCE + Dice loss of (N, P) mask logits against (K, P) objects in [0, 1]: an (N, K) matrix."""
    p = logits.shape[1]
    bce = (F.softplus(-logits) @ objects.T + F.softplus(logits) @ (1.0 - objects).T) / p
    prob = logits.sigmoid()
    dice = 1.0 - (2.0 * prob @ objects.T + 1.0) / (prob.sum(1, keepdim=True) + objects.sum(1)[None, :] + 1.0)
    return bce + dice


@torch.no_grad()
def match(
    masks: torch.Tensor, objectness: torch.Tensor | None, targets: InstanceTargets
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hungarian matching of every image's N masks to its objects: (mask indices, object indices) per image.

    Costs (mask BCE + Dice - objectness probability, as Mask2Former) at the masks' own resolution, the objects
    area-averaged to it. With more objects than masks, the referred object and the largest others are matched.
    """
    b, n = masks.shape[:2]
    logits = masks.float().flatten(2)
    objects = _objects_at(targets.masks, masks.shape[-2:]).flatten(2)
    out = []
    for i in range(b):
        k = int(targets.count[i])
        keep = torch.arange(k, device=objects.device)
        if k > n:  # the referred object first, then the largest
            area = objects[i, :k].sum(1)
            t = int(targets.target[i])
            if t >= 0:
                area[t] = float("inf")
            keep = area.argsort(descending=True)[:n].sort().values
        if len(keep) == 0:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            continue
        cost = _pair_costs(logits[i], objects[i, keep])
        if objectness is not None:
            cost = cost - objectness[i].float().sigmoid()[:, None]
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        out.append((rows.astype(np.int64), keep.cpu().numpy()[cols].astype(np.int64)))
    return out


def hypothesis_losses(
    masks: torch.Tensor,
    weight_logits: torch.Tensor | None,
    objectness: torch.Tensor | None,
    targets: InstanceTargets,
    no_object_weight: float = 0.1,
) -> dict[str, torch.Tensor]:
    """``proposal`` (each matched mask, upsampled to the objects' resolution, against its object: BCE + Dice; plus
    objectness when given) and ``selection`` (cross-entropy of the sentence's weight logits against the mask
    matched to the referred object; 0 when no image of the batch has one), both scalars."""
    pairs = match(masks, objectness, targets)
    zero = masks.sum() * 0.0
    b, n = masks.shape[:2]
    pred, gold = [], []
    chosen = torch.full((b,), -1, dtype=torch.long, device=masks.device)
    obj_target = torch.zeros(b, n, device=masks.device, dtype=masks.dtype)
    for i, (rows, cols) in enumerate(pairs):
        if len(rows) == 0:
            continue
        r = torch.as_tensor(rows, device=masks.device)
        c = torch.as_tensor(cols, device=masks.device)
        pred.append(resize_logits(masks[i, r][None], targets.masks.shape[-2:])[0])  # the matched masks only
        gold.append(targets.masks[i, c].to(masks.dtype))
        obj_target[i, r] = 1.0
        hit = (c == targets.target[i]).nonzero()
        if len(hit):
            chosen[i] = r[hit[0, 0]]
    proposal = zero
    if pred:
        p, g = torch.cat(pred).flatten(1).float(), torch.cat(gold).flatten(1).float()
        proposal = F.binary_cross_entropy_with_logits(p, g) + dice_loss(p, g)
    if objectness is not None:
        w = obj_target + (1.0 - obj_target) * no_object_weight
        obj = F.binary_cross_entropy_with_logits(objectness.float(), obj_target.float(), reduction="none")
        proposal = proposal + (w * obj).sum() / w.sum()
    selection = zero
    picked = chosen >= 0
    if weight_logits is not None and bool(picked.any()):
        selection = F.cross_entropy(weight_logits[picked].float(), chosen[picked])
    return {"proposal": proposal, "selection": selection}
