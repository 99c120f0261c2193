"""Trivial baselines of a split, computed by the pipeline beside the trained runs (rows of the demo tables).

* ``all_foreground``: every pixel is foreground;
* ``random_object``: the mask of one annotated object of the image, drawn uniformly (seeded): what a model
  scores that segments objects perfectly but ignores the sentence;
* ``largest_object``: the image's largest annotated object (by mask area), another sentence-blind guess.

Each is scored exactly as a model (:func:`ris.evaluation.results.write_results`: same resizing, protocol and
referring accuracy), into ``<out_dir>/<baseline>/metrics.json`` and ``samples.csv``, with the baseline's
name as ``method`` so tables and plots read them like any run.

The names are imported by the Snakefile (through :mod:`ris.report.spec`); the heavy imports (torch, pycocotools)
wait inside the functions so a dry run stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

BASELINES: tuple[str, ...] = ("all_foreground", "random_object", "largest_object")
BASELINE_BACKBONE = "-"  # what a baseline's metrics.json says its backbone is


def _objects_by_image(instances: dict) -> dict[int, list[dict]]:
    from ris.data.refer import annotation_rle

    images = {int(im["id"]): im for im in instances["images"]}
    out: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        im = images[int(ann["image_id"])]
        rle = annotation_rle(ann["segmentation"], int(im["height"]), int(im["width"]))
        out.setdefault(int(ann["image_id"]), []).append(rle)
    return out


def baseline_masks(name: str, table: pd.DataFrame, objects: dict[int, list[dict]], size: int, seed: int = 0):
    """The baseline's prediction of every row of ``table``, (N, size, size) bool, at the evaluation size."""
    from pycocotools import mask as mask_utils

    from ris.evaluation.results import mask_at

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    rng = np.random.default_rng(seed)
    out = np.zeros((len(table), size, size), dtype=bool)
    for k, r in enumerate(table.itertuples()):
        if name == "all_foreground":
            out[k] = True
            continue
        objs = objects.get(int(r.image_id))
        if not objs:
            raise ValueError(f"image {r.image_id} ({r.file_name}) has no annotation in instances.json")
        if name == "random_object":
            rle = objs[int(rng.integers(len(objs)))]
        else:
            rle = max(objs, key=lambda o: float(mask_utils.area(o)))
        out[k] = mask_at(rle["counts"], r.height, r.width, size)
    return out


def evaluate_baselines(
    split_table: Path,
    instances_json: Path,
    size: int,
    dataset: str,
    split: str,
    out_dir: Path,
    names: tuple[str, ...] = BASELINES,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score each baseline on one prepared split; returns baseline -> the metrics.json written."""
    import torch

    from ris.data.prepare import read_split
    from ris.data.refer import load_instances
    from ris.evaluation.results import encode_masks, mask_at, write_results

    table = read_split(split_table)
    objects = _objects_by_image(load_instances(instances_json))
    targets = np.stack([mask_at(r.rle, r.height, r.width, size) for r in table.itertuples()])
    rows = np.arange(len(table))
    results = {}
    for name in names:
        pred = baseline_masks(name, table, objects, size, seed)
        inter = (pred & targets).sum((1, 2)).astype(np.int64)
        union = (pred | targets).sum((1, 2)).astype(np.int64)
        header = {
            "run": f"{dataset}/baseline-{name}",
            "dataset": dataset,
            "split": split,
            "method": name,
            "backbone": BASELINE_BACKBONE,
            "num_masks": 0,
            "seed": 0,
            "epoch": -1,
        }
        masks = encode_masks(torch.from_numpy(pred))
        results[name] = write_results(Path(out_dir) / name, header, table, rows, inter, union, masks, size)
    return results
