"""Are a run's N masks N hypotheses? Diagnostics of the methods whose prediction is a weighted sum of masks.

CoupAlign (sentence-mask alignment), EAVL (multi-query estimator) and JMCELN (contextual masks) return
``masks`` (B, N, h, w) logits, ``mask_weights`` (B, N) and ``queries`` (B, N, D) beside their prediction
(:class:`ris.models.blocks.MaskHypotheses`). Per validation sample this measures (issue 21's definitions):

* ``distinct_masks``: masks with logit > 0 on >= ``min_area`` (1%) of the pixels, taken by decreasing weight
  and merged greedily into the first kept mask they overlap with IoU >= ``merge_iou`` (0.5); the count left;
* ``weight_entropy``: entropy of the weights / log N (1: uniform, 0: one mask takes all);
* ``top_mask_hit``: whether the highest-weighted mask (logit > 0, resized to the target) has IoU >= 0.5
  with the referred object;
* ``query_cosine``: mean pairwise cosine similarity of the N final query embeddings (1: one query N times);
* ``object_recall``: share of the image's objects (``instances.parquet``) that some mask covers with IoU >= 0.5.

Collapsed masks read: distinct 1, entropy 1, query cosine 1; hypotheses read: distinct >= 2, entropy low,
top-mask hit high, object recall high.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ris.utils import atomic_path

#: The keys a multi-mask model's forward returns (``ris.models.blocks.MaskHypotheses``).
MASK_OUTPUTS = ("masks", "mask_weights", "queries")
#: Written by ``ris evaluate`` beside a split's metrics.json for models with mask hypotheses.
DIAGNOSTICS_FILE = "mask_diagnostics.json"
#: What each diagnostic is (written into every mask_diagnostics.json and the table's notes).
DEFINITIONS = {
    "distinct_masks": "masks with logit > 0 on >= 1% of the pixels, merged greedily by weight at IoU >= 0.5: count",
    "weight_entropy": "entropy of the N weights / log N (1: uniform, 0: one mask takes all)",
    "top_mask_hit": "share of samples whose highest-weighted mask has IoU >= 0.5 with the referred object",
    "query_cosine": "mean pairwise cosine similarity of the N final query embeddings (1: one query N times)",
    "object_recall": "share of the image's objects that some mask covers with IoU >= 0.5",
    "top_weight": "the largest of the N weights",
}
#: Samples measured (the first of the split) and shown in the figure.
MAX_SAMPLES, EXAMPLES = 1000, 4


def distinct_masks(masks: torch.Tensor, weights: torch.Tensor, min_area: float = 0.01, merge_iou: float = 0.5) -> int:
    """Number of distinct masks of one sample: (N, h, w) logits, (N,) weights (see the module docstring)."""
    binary = (masks > 0).flatten(1)
    area = binary.sum(1)
    keep_idx = [int(i) for i in weights.argsort(descending=True) if area[i] >= min_area * binary.shape[1]]
    iou = pairwise_iou(binary[keep_idx], binary[keep_idx]).numpy()  # one product, not a Python loop over pairs
    kept: list[int] = []
    for j in range(len(keep_idx)):
        if all(iou[j, k] < merge_iou for k in kept):
            kept.append(j)
    return len(kept)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every row of ``a`` (M, P) with every row of ``b`` (K, P), both boolean: (M, K) float64, 0 where
    the union is empty."""
    a, b = a.double(), b.double()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


def weight_entropy(weights: torch.Tensor) -> float:
    """Entropy of (N,) weights normalised by log N (N = 1: 0)."""
    n = weights.numel()
    if n < 2:
        return 0.0
    w = weights.double().clamp_min(1e-12)
    return float(-(w * w.log()).sum() / math.log(n))


def query_cosine(queries: torch.Tensor) -> float:
    """Mean pairwise cosine similarity of (N, D) query embeddings (off-diagonal pairs)."""
    n = queries.shape[0]
    if n < 2:
        return 1.0
    q = F.normalize(queries.detach().double(), dim=1)
    sim = q @ q.T
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def sample_diagnostics(
    masks: torch.Tensor,
    weights: torch.Tensor,
    queries: torch.Tensor,
    target: torch.Tensor,
    objects: torch.Tensor | None = None,
) -> dict[str, float]:
    """The diagnostics of one sample: masks (N, h, w) logits, weights (N,), queries (N, D), the target (H, W)
    0/1 at any resolution, and optionally the image's objects (K, h', w') 0/1."""
    top = masks[int(weights.argmax())][None, None].float()
    top = F.interpolate(top, size=target.shape[-2:], mode="bilinear", align_corners=False)[0, 0] > 0
    out = {
        "distinct_masks": float(distinct_masks(masks, weights)),
        "weight_entropy": weight_entropy(weights),
        "top_mask_hit": float(pairwise_iou(top.flatten()[None], target.bool().flatten()[None])[0, 0] >= 0.5),
        "query_cosine": query_cosine(queries),
        "top_weight": float(weights.max()),
    }
    if objects is not None and len(objects):
        pred = F.interpolate(masks[None].float(), size=objects.shape[-2:], mode="bilinear", align_corners=False)[0]
        best = pairwise_iou((pred > 0).flatten(1), objects.bool().flatten(1)).max(0).values  # per object
        out["object_recall"] = float((best >= 0.5).double().mean())
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Means over samples of every diagnostic, and the sample count."""
    keys = sorted({k for r in rows for k in r})
    summary: dict[str, Any] = {"samples": len(rows)}
    for k in keys:
        values = [r[k] for r in rows if k in r]
        summary[k] = float(np.mean(values)) if values else float("nan")
    return summary


def example(
    row: int, masks: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor, size: tuple[int, int], top: int
) -> dict[str, Any]:
    """One sample for the figure: its ``top`` highest-weighted masks (RLE at ``size``) with their weights and
    indices, and the final prediction (RLE)."""
    from ris.evaluation.results import encode_masks

    order = weights.argsort(descending=True)[:top]
    up = F.interpolate(masks[order][None].float(), size=size, mode="bilinear", align_corners=False)[0] > 0
    final = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=True)[0] > 0
    return {
        "row": row,
        "mask_index": [int(i) for i in order],
        "weights": [float(weights[i]) for i in order],
        "masks": encode_masks(up),
        "prediction": encode_masks(final)[0],
    }


class Diagnoser:
    """Accumulates the diagnostics of the batches it is shown (items as :class:`ris.data.dataset.ReferSplit`'s,
    with instance targets when attached, and the model's forward outputs): the means over the first
    ``max_samples`` samples, and the first ``examples`` samples' :func:`example` records for the figure.
    ``ris evaluate`` feeds it from its one inference pass (:func:`ris.evaluation.inference.run_inference`)."""

    def __init__(self, max_samples: int | None = MAX_SAMPLES, examples: int = EXAMPLES, top: int = 4):
        self.max_samples, self.examples, self.top = max_samples, examples, top
        self.rows: list[dict[str, float]] = []
        self.shown: list[dict[str, Any]] = []

    @property
    def full(self) -> bool:
        return bool(self.max_samples) and len(self.rows) >= self.max_samples

    @torch.no_grad()
    def update(self, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        missing = [k for k in MASK_OUTPUTS if k not in out]
        if missing:
            raise ValueError(f"the model returns no {', '.join(missing)}: it has no mask hypotheses")
        for i in range(out["masks"].shape[0]):
            if self.full:
                return
            masks, weights = out["masks"][i].float().cpu(), out["mask_weights"][i].float().cpu()
            objects = None
            if "instances" in batch:
                objects = batch["instances"][i, : int(batch["num_instances"][i])]
            target = batch["target"][i]
            self.rows.append(sample_diagnostics(masks, weights, out["queries"][i].float().cpu(), target, objects))
            if len(self.shown) < self.examples:
                logits = out["logits"][i].float().cpu()
                record = example(int(batch["row"][i]), masks, weights, logits, tuple(target.shape), self.top)
                self.shown.append(record)

    def result(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The means of :func:`sample_diagnostics` (and the sample count), and the figure's examples."""
        return summarise(self.rows), self.shown


def write_mask_diagnostics(path: Path, header: dict[str, Any], diagnoser: Diagnoser) -> dict[str, Any]:
    """Write what ``diagnoser`` accumulated to ``path`` (JSON: the run's header, ``metrics`` = the means of
    :func:`sample_diagnostics`, ``examples`` for the figure); return what was written."""
    summary, shown = diagnoser.result()
    record = {**header, "metrics": summary, "examples": shown, "definitions": DEFINITIONS}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return record
