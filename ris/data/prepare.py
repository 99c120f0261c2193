"""REFER files -> one compact table per split: one row per (ref, sentence).

Each row carries the image file, the sentence, the ground-truth mask as a COCO compressed RLE string
(decoded once per ref, shared by its sentences), the bbox and all ids, so training and evaluation never
read the REFER pickle or ``instances.json`` again. Tables are written as Parquet, atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from pycocotools import mask as mask_utils

from ris.data.refer import ReferDataset, ReferFormatError, annotation_rle
from ris.utils import atomic_path

COLUMNS = (
    "ref_id",
    "ann_id",
    "image_id",
    "sent_id",
    "sentence",
    "raw",
    "file_name",
    "width",
    "height",
    "category_id",
    "category",
    "bbox",
    "rle",
    "mask_area",
)


class MissingImagesError(FileNotFoundError):
    """Images referenced by the annotations are not on disk."""


def check_images(images_dir: Path, file_names: list[str], show: int = 5) -> None:
    """Raise MissingImagesError listing the first missing image files and how many are missing."""
    images_dir = Path(images_dir)
    existing = set(os.listdir(images_dir)) if images_dir.is_dir() else set()
    missing = sorted(f for f in set(file_names) if f not in existing)
    if missing:
        head = ", ".join(missing[:show])
        raise MissingImagesError(
            f"{len(missing)} of {len(set(file_names))} referenced images are missing from {images_dir} (first: {head})"
        )


def split_table(ds: ReferDataset, split: str) -> pd.DataFrame:
    """The (ref, sentence) table of one split."""
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for ref in ds.split(split):
        ann = ds.anns[int(ref["ann_id"])]
        img = ds.images[int(ref["image_id"])]
        h, w = int(img["height"]), int(img["width"])
        try:
            rle = annotation_rle(ann["segmentation"], h, w)
        except (ReferFormatError, TypeError, ValueError, KeyError) as e:
            raise ReferFormatError(
                f"{ds.instances_path}: annotation {ann['id']}: field 'segmentation' could not be decoded ({e})"
            ) from None
        counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        area = int(mask_utils.area(rle))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        cat_id = int(ref.get("category_id", ann.get("category_id", -1)))
        for s in ref["sentences"]:
            rows["ref_id"].append(int(ref["ref_id"]))
            rows["ann_id"].append(int(ref["ann_id"]))
            rows["image_id"].append(int(ref["image_id"]))
            rows["sent_id"].append(int(s["sent_id"]))
            rows["sentence"].append(str(s["sent"]))
            rows["raw"].append(str(s.get("raw", s["sent"])))
            rows["file_name"].append(str(img["file_name"]))
            rows["width"].append(w)
            rows["height"].append(h)
            rows["category_id"].append(cat_id)
            rows["category"].append(ds.categories.get(cat_id, str(cat_id)))
            rows["bbox"].append(bbox)
            rows["rle"].append(counts)
            rows["mask_area"].append(area)
    return pd.DataFrame(rows, columns=list(COLUMNS))


INSTANCE_COLUMNS = ("image_id", "ann_id", "category_id", "area", "rle")


def instances_table(ds: ReferDataset, image_ids: set[int]) -> pd.DataFrame:
    """Every annotation (object instance) of the given images, its mask as a COCO RLE string.

    The objects of an image that a ref does not name are what mask proposals learn to hypothesize
    (CoupAlign's N masks, EAVL's queries: :mod:`ris.models.proposals`); crowd regions are left out.
    """
    rows: dict[str, list] = {c: [] for c in INSTANCE_COLUMNS}
    for ann in ds.anns.values():
        image_id = int(ann["image_id"])
        if image_id not in image_ids or ann.get("iscrowd", 0):
            continue
        img = ds.images[image_id]
        try:
            rle = annotation_rle(ann["segmentation"], int(img["height"]), int(img["width"]))
        except (ReferFormatError, TypeError, ValueError, KeyError) as e:
            raise ReferFormatError(
                f"{ds.instances_path}: annotation {ann['id']}: field 'segmentation' could not be decoded ({e})"
            ) from None
        counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        rows["image_id"].append(image_id)
        rows["ann_id"].append(int(ann["id"]))
        rows["category_id"].append(int(ann.get("category_id", -1)))
        rows["area"].append(int(mask_utils.area(rle)))
        rows["rle"].append(counts)
    return pd.DataFrame(rows, columns=list(INSTANCE_COLUMNS)).sort_values(["image_id", "ann_id"], ignore_index=True)


def prepare(
    refer_dir: Path,
    split_by: str,
    splits: list[str],
    out_dir: Path,
    images_dir: Path | None = None,
) -> dict[str, dict[str, int]]:
    """Write ``<out_dir>/<split>.parquet`` for every split, ``instances.parquet`` (every object instance of
    their images) and a ``summary.json``; return the counts."""
    ds = ReferDataset.load(Path(refer_dir), split_by)
    tables = {split: split_table(ds, split) for split in splits}
    empty = [s for s, t in tables.items() if t.empty]
    if empty:
        raise ReferFormatError(f"{ds.refs_path}: no refs in split(s) {', '.join(empty)}")
    if images_dir is not None:
        check_images(images_dir, [f for t in tables.values() for f in t["file_name"].unique()])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    for split, table in tables.items():
        with atomic_path(out_dir / f"{split}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        summary[split] = {
            "refs": int(table["ref_id"].nunique()),
            "sentences": len(table),
            "images": int(table["image_id"].nunique()),
        }
    image_ids = {int(i) for t in tables.values() for i in t["image_id"].unique()}
    with atomic_path(out_dir / "instances.parquet") as tmp:
        instances_table(ds, image_ids).to_parquet(tmp, index=False)
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def split_tables(prepared_dir: Path) -> list[Path]:
    """The ``<split>.parquet`` tables of a prepared dataset, as its ``summary.json`` lists them."""
    summary = Path(prepared_dir) / "summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: not found; run `ris prepare` (or snakemake) first")
    return [Path(prepared_dir) / f"{split}.parquet" for split in json.loads(summary.read_text())]


def read_instances(prepared_dir: Path) -> pd.DataFrame:
    """Read ``instances.parquet`` of a prepared dataset, with a clear error when it is missing."""
    path = Path(prepared_dir) / "instances.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: instance table not found; re-run `ris prepare` (or snakemake)")
    table = pd.read_parquet(path)
    missing = [c for c in INSTANCE_COLUMNS if c not in table.columns]
    if missing:
        raise ReferFormatError(f"{path}: missing column(s) {', '.join(missing)}; re-run `ris prepare`")
    return table


def read_split(path: Path) -> pd.DataFrame:
    """Read a prepared split table, with a clear error when it is missing or of another layout."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: prepared split not found; run `ris prepare` (or snakemake) first")
    table = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ReferFormatError(f"{path}: missing column(s) {', '.join(missing)}; re-run `ris prepare`")
    return table
