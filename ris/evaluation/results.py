"""The evaluation's files: ``metrics.json`` and ``samples.csv`` of a split, written and read back.

The file contract between the ``evaluate`` rule and the report (tables and figures read only these). No
torch at import: the report and the Snakefile import this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ris.metrics import mask_rle, referring_accuracy, referring_outcomes, summarize
from ris.utils import atomic_path, write_json

if TYPE_CHECKING:
    import torch

PROTOCOL = (
    "LAVT test.py protocol: one sample per (ref, sentence); prediction vs ground truth at "
    "{size}x{size} (GT resized nearest); IoU=I/U (0 if U=0); oIoU=sum I/sum U; mIoU=mean IoU; "
    "P@X=share of samples with IoU>=X; RefAcc=share of samples of images with several refs whose prediction "
    "has a higher IoU with its own ref's mask than with any other ref's"
)


def encode_masks(masks: torch.Tensor) -> list[str]:
    """Boolean masks (B, H, W) as compressed COCO RLE strings (decode with ``ris.data.refer.decode_rle``)."""
    from pycocotools import mask as mask_utils

    arr = np.asfortranarray(masks.cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    return [r["counts"].decode("ascii") for r in mask_utils.encode(arr)]


def mask_at(counts: str | bytes, height: int, width: int, size: int) -> np.ndarray:
    """An RLE mask of a (height, width) image at the evaluation size, (size, size) bool: the protocol resizes
    ground truth with nearest neighbour."""
    from ris.data.dataset import resize_mask
    from ris.data.refer import decode_rle

    return resize_mask(decode_rle(counts, int(height), int(width)), size).numpy().astype(bool)


def ref_masks_at(table: pd.DataFrame, size: int) -> dict[int, dict]:
    """Ground-truth mask of every ref of a split table at the evaluation size, as RLE dicts."""
    first = table.drop_duplicates("ref_id")
    return {int(r.ref_id): mask_rle(mask_at(r.rle, r.height, r.width, size)) for r in first.itertuples()}


def write_results(
    out_dir: Path,
    header: dict[str, Any],
    table: pd.DataFrame,
    rows: np.ndarray,
    inter: np.ndarray,
    union: np.ndarray,
    masks: list[str],
    size: int,
) -> dict[str, Any]:
    """Write ``samples.csv`` and ``metrics.json`` (``header`` + metrics + counts) of predictions on a split.

    ``rows``: the table row of each prediction; ``masks``: the predictions as RLE strings at ``size``. The
    metrics are the protocol's (:func:`ris.metrics.summarize`) plus the referring accuracy ``RefAcc``
    (:func:`ris.metrics.referring_outcomes`; NaN, written as null, when no image has two refs).
    """
    samples = table.iloc[rows][["ref_id", "sent_id", "image_id", "file_name", "sentence"]].copy()
    samples["intersection"], samples["union"] = inter, union
    samples["iou"] = np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)
    outcomes = referring_outcomes(
        masks, samples["image_id"].to_numpy(), samples["ref_id"].to_numpy(), ref_masks_at(table, size)
    )
    samples["refers"] = outcomes
    samples["pred_size"] = size
    samples["pred_rle"] = masks
    ref = referring_accuracy(outcomes)
    result = {
        **header,
        "metrics": {**summarize(inter, union), "RefAcc": ref["RefAcc"]},
        "counts": {
            "samples": int(len(inter)),
            "refs": int(table["ref_id"].nunique()),
            "refacc_samples": ref["refacc_samples"],
        },
        "protocol": PROTOCOL.format(size=size),
        "eval_size": size,
    }
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "samples.csv") as tmp:
        samples.to_csv(tmp, index=False)
    write_json(out_dir / "metrics.json", {**result, "metrics": _json_safe(result["metrics"])})
    return result


def _json_safe(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: None if v is None or (isinstance(v, float) and np.isnan(v)) else v for k, v in metrics.items()}


def load_metrics(paths: list[Path]) -> pd.DataFrame:
    """Long table (one row per run x split x metric) from metrics.json files."""
    rows = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        for metric, value in r["metrics"].items():
            if value is None:  # e.g. RefAcc on a split whose images have one ref each
                continue
            rows.append(
                {k: r[k] for k in ("dataset", "split", "method", "backbone", "num_masks", "seed")}
                | {"metric": metric, "value": value, "samples": r["counts"]["samples"]}
            )
    return pd.DataFrame(rows)
