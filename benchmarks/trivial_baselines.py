"""Metrics of trivial predictions on a prepared split: all foreground, all background, and (with
``--instances``) "a random object of the image": the mask of one of the image's annotated objects drawn
uniformly (seeded), i.e. what a model scores that segments objects well but ignores the expression.

The references a trained model must clearly beat. Same protocol as `ris evaluate` (ground truth resized
with nearest neighbour to the evaluation size).
Usage: python benchmarks/trivial_baselines.py data/prepared/synthetic/val.parquet --size 96 \
           --instances data/refer/synthetic/instances.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ris.data.dataset import resize_mask
from ris.data.prepare import read_split
from ris.data.refer import decode_rle
from ris.metrics import IoUAccumulator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--instances", default=None, help="instances.json of the dataset, for the random-object baseline")
    a = ap.parse_args()
    table = read_split(a.table)
    targets = torch.stack(
        [resize_mask(decode_rle(r.rle, r.height, r.width), a.size) for r in table.itertuples()]
    ).bool()
    preds = {"all_foreground": torch.ones_like(targets), "all_background": torch.zeros_like(targets)}
    if a.instances:
        from ris.data.refer import annotation_rle, load_instances

        inst = load_instances(a.instances)
        by_image: dict[int, list[dict]] = {}
        for ann in inst["annotations"]:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        rng = np.random.default_rng(0)
        masks = []
        for r in table.itertuples():
            ann = by_image[int(r.image_id)][rng.integers(len(by_image[int(r.image_id)]))]
            rle = annotation_rle(ann["segmentation"], r.height, r.width)
            masks.append(resize_mask(decode_rle(rle["counts"], r.height, r.width), a.size))
        preds["random_object"] = torch.stack(masks).bool()
    out = {}
    for name, pred in preds.items():
        acc = IoUAccumulator()
        acc.update(pred, targets)
        out[name] = {k: round(v, 2) for k, v in acc.compute().items()}
    out["samples"] = len(table)
    out["mean_foreground_fraction"] = round(float(np.mean(targets.float().mean((1, 2)).numpy())), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
