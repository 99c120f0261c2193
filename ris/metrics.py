"""Evaluation metrics of referring image segmentation, per the protocol pinned in docs/evaluation.md.

The de-facto standard is LAVT's ``test.py``: every sentence of every ref is one sample; prediction and
ground truth are compared at the evaluation resolution; per-sample IoU = I / U, and 0 when U = 0;

* **mIoU** = mean of per-sample IoUs;
* **oIoU** (overall IoU) = sum of I / sum of U over all samples;
* **P@X** = share of samples with IoU >= X, for X in 0.5 .. 0.9.

All values are returned in percent (0..100), as the papers print them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: tables and plots (and the Snakefile) import this module
    import torch

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_NAMES: tuple[str, ...] = ("oIoU", "mIoU", *(f"P@{t}" for t in THRESHOLDS))


def intersection_union(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union pixel counts of boolean masks shaped (B, H, W)."""
    import torch

    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.bool().flatten(1)
    target = target.bool().flatten(1)
    inter = (pred & target).sum(1, dtype=torch.int64)
    union = (pred | target).sum(1, dtype=torch.int64)
    return inter, union


def summarize(inter: np.ndarray, union: np.ndarray) -> dict[str, float]:
    """oIoU, mIoU and P@X (percent) from per-sample intersection and union counts."""
    inter = np.asarray(inter, dtype=np.int64)
    union = np.asarray(union, dtype=np.int64)
    n = int(inter.size)
    if n == 0:
        raise ValueError("cannot summarize zero samples")
    iou = np.divide(inter, union, out=np.zeros(n, dtype=np.float64), where=union > 0)
    total_union = int(union.sum())
    out = {
        "oIoU": 100.0 * float(inter.sum()) / total_union if total_union > 0 else 0.0,
        "mIoU": 100.0 * float(iou.mean()),
    }
    for t in THRESHOLDS:
        out[f"P@{t}"] = 100.0 * float((iou >= t).mean())
    return out


@dataclass
class IoUAccumulator:
    """Collects per-sample intersection/union counts batch by batch; `compute()` gives the metrics."""

    inter: list[np.ndarray] = field(default_factory=list)
    union: list[np.ndarray] = field(default_factory=list)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add a batch of boolean masks (B, H, W); returns the per-sample IoU of the batch."""
        import torch

        i, u = intersection_union(pred, target)
        self.inter.append(i.cpu().numpy())
        self.union.append(u.cpu().numpy())
        return torch.where(u > 0, i.double() / u.clamp(min=1).double(), torch.zeros_like(i, dtype=torch.double))

    @property
    def count(self) -> int:
        return int(sum(a.size for a in self.inter))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.inter:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.inter), np.concatenate(self.union)

    def compute(self) -> dict[str, float]:
        return summarize(*self.arrays())


# ---------------------------------------------------------------------------------------------------------
# Referring accuracy: does the prediction pick the named object rather than another referred one?


def mask_rle(mask: np.ndarray) -> dict:
    """A (H, W) 0/1 mask as a compressed COCO RLE dict (what ``pycocotools.mask.iou`` takes)."""
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def referring_outcomes(
    pred_rles: list[str], image_ids: np.ndarray, ref_ids: np.ndarray, ref_masks: dict[int, dict]
) -> np.ndarray:
    """Per sample: 1.0 when its prediction overlaps its own ref's mask more than any other ref's mask of the
    same image, 0.0 when not (ties lose), NaN when its image has no other ref.

    ``pred_rles``: compressed RLE strings of the predictions at the evaluation size; ``ref_masks``: ref id ->
    ground-truth RLE dict at that size. This is the language-sensitivity test of the demo: a model that
    segments objects but ignores the sentence is right about as often as it picks the named one by chance.
    """
    from pycocotools import mask as mask_utils

    out = np.full(len(pred_rles), np.nan)
    refs_of_image: dict[int, list[int]] = {}
    for img, ref in zip(image_ids.tolist(), ref_ids.tolist()):
        refs_of_image.setdefault(img, [])
        if ref not in refs_of_image[img]:
            refs_of_image[img].append(ref)
    for k, (img, ref) in enumerate(zip(image_ids.tolist(), ref_ids.tolist())):
        refs = refs_of_image[img]
        if len(refs) < 2:
            continue
        size = ref_masks[ref]["size"]
        pred = {"size": size, "counts": pred_rles[k].encode()}
        ious = mask_utils.iou([pred], [ref_masks[r] for r in refs], [0] * len(refs))[0]
        own = ious[refs.index(ref)]
        others = [v for r, v in zip(refs, ious) if r != ref]
        out[k] = float(own > max(others))
    return out


def referring_accuracy(outcomes: np.ndarray) -> dict[str, float]:
    """``RefAcc`` (percent of eligible samples whose prediction picks the named object) and their count."""
    eligible = ~np.isnan(outcomes)
    n = int(eligible.sum())
    return {"RefAcc": 100.0 * float(outcomes[eligible].mean()) if n else float("nan"), "refacc_samples": n}
