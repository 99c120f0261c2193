"""REFER reader and prepare on the real RefCOCOg sample; the safe unpickler; clear errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ris.data.prepare import MissingImagesError, prepare, read_split
from ris.data.refer import ReferDataset, ReferFormatError, decode_rle, safe_unpickle, select_split


def plain_refs(root: Path) -> list[dict]:
    with open(root / "refs(umd).p", "rb") as f:
        return pickle.load(f)


def test_split_semantics_follow_refer_api():
    refs = [{"split": s} for s in ("train", "val", "testA", "testB", "testAB", "test")]
    assert [r["split"] for r in select_split(refs, "testA")] == ["testA", "testAB"]
    assert [r["split"] for r in select_split(refs, "testB")] == ["testB", "testAB"]
    assert [r["split"] for r in select_split(refs, "test")] == ["testA", "testB", "testAB", "test"]
    assert [r["split"] for r in select_split(refs, "train")] == ["train"]
    with pytest.raises(ValueError, match="unknown REFER split"):
        select_split(refs, "bogus")


def test_prepare_real_fixture_counts_and_masks(refcocog_sample, tmp_path):
    summary = prepare(refcocog_sample, "umd", ["train", "val", "test"], tmp_path, refcocog_sample / "images")
    refs = plain_refs(refcocog_sample)
    coco = COCO(str(refcocog_sample / "instances.json"))
    for split in ("train", "val", "test"):
        mine = [r for r in refs if r["split"] == split]
        table = read_split(tmp_path / f"{split}.parquet")
        assert summary[split]["refs"] == len(mine) == 5
        assert len(table) == summary[split]["sentences"] == sum(len(r["sentences"]) for r in mine)
        assert set(table["sent_id"]) == {s["sent_id"] for r in mine for s in r["sentences"]}
        for _, row in table.drop_duplicates("ref_id").iterrows():
            ann = coco.anns[int(row["ann_id"])]
            direct = coco.annToMask(ann)
            ours = decode_rle(row["rle"], int(row["height"]), int(row["width"]))
            assert ours.shape == direct.shape
            assert int(ours.sum()) == int(direct.sum()) == int(row["mask_area"])
            assert np.array_equal(ours, direct)
            assert row["file_name"] == coco.imgs[int(row["image_id"])]["file_name"]


def test_overlapping_polygons_are_foreground(refcocog_sample):
    """Annotation 228442 has two polygons that overlap; their union is the mask (LAVT's XOR is not)."""
    ds = ReferDataset.load(refcocog_sample, "umd")
    ann = ds.anns[228442]
    img = ds.images[int(ann["image_id"])]
    h, w = img["height"], img["width"]
    parts = [mask_utils.decode(r) for r in mask_utils.frPyObjects(ann["segmentation"], h, w)]
    assert len(parts) >= 2 and int((parts[0] & parts[1]).sum()) > 0
    from ris.data.refer import annotation_rle

    m = mask_utils.decode(annotation_rle(ann["segmentation"], h, w))
    assert np.array_equal(m, np.bitwise_or.reduce(parts))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ris_pwned_marker",))


def test_unpickler_refuses_code(tmp_path):
    marker = Path("/tmp/ris_pwned_marker")
    marker.unlink(missing_ok=True)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Evil()}]))
    with pytest.raises(ReferFormatError, match=r"refusing to unpickle .*system"):
        safe_unpickle(path)
    assert not marker.exists()


def test_unpickler_accepts_plain_data_and_rejects_truncated(tmp_path):
    data = [{"a": [1, 2.5, "x", None, True, (1, 2)], "b": b"bytes"}]
    p = tmp_path / "ok.p"
    p.write_bytes(pickle.dumps(data, protocol=2))
    assert safe_unpickle(p) == data
    bad = tmp_path / "truncated.p"
    bad.write_bytes(pickle.dumps(data)[:-7])
    with pytest.raises(ReferFormatError, match="truncated.p"):
        safe_unpickle(bad)


def test_unknown_annotation_and_missing_fields(refcocog_sample, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(refcocog_sample, root, ignore=shutil.ignore_patterns("images"))
    refs = plain_refs(root)
    refs[3]["ann_id"] = 999999999
    (root / "refs(umd).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(ReferFormatError, match=r"ann_id 999999999"):
        ReferDataset.load(root, "umd")

    inst = json.loads((root / "instances.json").read_text())
    del inst["annotations"][5]["segmentation"]
    (root / "instances.json").write_text(json.dumps(inst))
    with pytest.raises(ReferFormatError, match=r"annotations\[5\]: missing field\(s\) segmentation"):
        ReferDataset.load(root, "umd")

    refs[3].pop("sentences")
    (root / "refs(umd).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(ReferFormatError, match=r"ref #3: missing field\(s\) sentences"):
        ReferDataset.load(root, "umd")


def test_missing_images_are_listed(refcocog_sample, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(refcocog_sample / "images", images)
    victims = sorted(os.listdir(images))[:2]
    for v in victims:
        (images / v).unlink()
    out = tmp_path / "out"
    with pytest.raises(MissingImagesError, match=rf"2 of 15 referenced images are missing .*{victims[0]}"):
        prepare(refcocog_sample, "umd", ["train", "val", "test"], out, images)
    assert not out.exists() or not list(out.glob("*.parquet"))


def test_prepare_synthetic_rle_and_polygons(tmp_path):
    """Occluded synthetic objects carry RLE segmentations: prepare decodes both kinds exactly."""
    from ris.data.synthetic import SyntheticConfig, synthesize

    root = tmp_path / "syn"
    cfg = SyntheticConfig.from_dict(
        {
            "seed": 1,
            "image_size": 64,
            "occlusion": True,
            "num_images": {"train": 12, "val": 4, "testA": 3, "testB": 3},
        }
    )
    synthesize(root, cfg)
    prepare(root, "unc", ["train", "val", "testA", "testB"], tmp_path / "prep", root / "images")
    coco = COCO(str(root / "instances.json"))
    kinds = set()
    for split in ("train", "val", "testA", "testB"):
        table = pd.read_parquet(tmp_path / "prep" / f"{split}.parquet")
        for _, row in table.drop_duplicates("ref_id").iterrows():
            ann = coco.anns[int(row["ann_id"])]
            kinds.add(type(ann["segmentation"]).__name__)
            assert np.array_equal(decode_rle(row["rle"], 64, 64), coco.annToMask(ann))
    assert kinds == {"list", "dict"}
