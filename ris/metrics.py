"""Evaluation metrics of referring image segmentation, per the protocol pinned in the README.

The de-facto standard is LAVT's ``test.py``: every sentence of every ref is one sample; prediction and
ground truth are compared at the evaluation resolution; per-sample IoU = I / U, and 0 when U = 0;

* **mIoU** = mean of per-sample IoUs;
* **oIoU** (overall IoU) = sum of I / sum of U over all samples;
* **P@X** = share of samples with IoU >= X, for X in 0.5 .. 0.9.

All values are returned in percent (0..100), as the papers print them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_NAMES: tuple[str, ...] = ("oIoU", "mIoU", *(f"P@{t}" for t in THRESHOLDS))


def intersection_union(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union pixel counts of boolean masks shaped (B, H, W)."""
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
        i, u = intersection_union(pred, target)
        self.inter.append(i.cpu().numpy())
        self.union.append(u.cpu().numpy())
        return torch.where(
            u > 0, i.double() / u.clamp(min=1).double(), torch.zeros_like(i, dtype=torch.double)
        )

    @property
    def count(self) -> int:
        return int(sum(a.size for a in self.inter))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.inter:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.inter), np.concatenate(self.union)

    def compute(self) -> dict[str, float]:
        return summarize(*self.arrays())
