"""The fake REFER generators (ris/data/fake_refer.py): the benchmarks' full-size one at a tiny size, and the
rehearsal's copy of every paper dataset: deterministic, read back by ``prepare`` with the counts they report,
real images whose pixels agree with the masks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ris.data.fake_refer import (
    COPY_CATEGORIES,
    CopySettings,
    generate_refer,
    make_stand_in_images,
    partitions_of,
    ref_labels,
    write_copy,
)
from ris.data.prepare import prepare
from ris.data.refer import ReferDataset, annotation_rle, decode_rle
from ris.data.scene import COLORS

SPLITS = ["train", "val", "testA", "testB"]
TINY = {"n_refs": 200, "sentences_per_ref": 2.84, "n_images": 80, "n_anns": 400, "seed": 5}


def test_generated_set_prepares_with_the_reported_counts(tmp_path):
    info = generate_refer(tmp_path / "refer", crowd_frac=0.05, two_polygon_frac=0.1, **TINY)
    make_stand_in_images(tmp_path / "images", info["file_names"])
    assert info["refs"] == 200 and info["sentences"] == round(200 * 2.84) and info["images"] == 80
    assert sum(s["refs"] for s in info["splits"].values()) == 200
    assert sum(s["sentences"] for s in info["splits"].values()) == info["sentences"]
    assert all(s["refs"] > 0 for s in info["splits"].values())

    summary = prepare(tmp_path / "refer", "unc", SPLITS, tmp_path / "prep", tmp_path / "images")
    assert summary == info["splits"]

    ds = ReferDataset.load(tmp_path / "refer", "unc")
    assert len(ds.anns) == 400 and len(ds.images) == 80
    kinds = {type(a["segmentation"]).__name__ for a in ds.anns.values()}
    assert kinds == {"list", "dict"}
    assert any(len(a["segmentation"]) == 2 for a in ds.anns.values() if isinstance(a["segmentation"], list))
    seen_images: set[int] = set()
    for split in SPLITS:
        table = pd.read_parquet(tmp_path / "prep" / f"{split}.parquet")
        assert len(table) == info["splits"][split]["sentences"]
        assert table["ref_id"].nunique() == info["splits"][split]["refs"]
        assert table["sentence"].str.split().str.len().between(3, 10).all()
        images = set(table["image_id"])
        assert not images & seen_images  # splits share no image, like RefCOCO
        seen_images |= images
        for _, row in table.drop_duplicates("ref_id").iterrows():
            mask = decode_rle(row["rle"], int(row["height"]), int(row["width"]))
            assert int(mask.sum()) == int(row["mask_area"]) > 0


def test_generator_is_deterministic(tmp_path):
    generate_refer(tmp_path / "a", **TINY)
    generate_refer(tmp_path / "b", **TINY)
    for name in ("refs(unc).p", "instances.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    generate_refer(tmp_path / "c", **{**TINY, "seed": 6})
    assert (tmp_path / "a" / "instances.json").read_bytes() != (tmp_path / "c" / "instances.json").read_bytes()


@pytest.fixture(scope="module")
def paper_copy(tmp_path_factory):
    """The rehearsal's copy of config.yaml's REFER datasets, with the shipped settings."""
    from ris.config import load_yaml
    from tests.helpers import REPO

    cfg = load_yaml(REPO / "config.yaml")
    root = tmp_path_factory.mktemp("copy")
    settings = CopySettings.from_dict(cfg["rehearsal_slice"]["data"])
    summary = write_copy(root / "refer", root / "train2014", partitions_of(cfg["datasets"]), settings)
    return cfg, root, settings, summary


def test_copy_holds_every_paper_dataset_and_prepare_reads_it(paper_copy, tmp_path):
    cfg, root, settings, summary = paper_copy
    refer = {name: d for name, d in cfg["datasets"].items() if d["source"] == "refer"}
    assert {(d["folder"], d["split_by"]) for d in refer.values()} == {
        ("refcoco", "unc"), ("refcoco", "google"), ("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google")
    }  # fmt: skip
    for name, d in refer.items():
        got = prepare(root / "refer" / d["folder"], d["split_by"], d["splits"], tmp_path / name, root / "train2014")
        assert got == summary[d["folder"]][d["split_by"]], name
        for split in d["splits"]:
            counts = got[split]
            want_images = settings.eval_images if split != "train" else settings.train_images
            assert counts["images"] >= want_images and counts["refs"] == settings.refs_per_image * counts["images"]
            lo, hi = settings.sentences_per_ref
            assert lo * counts["refs"] <= counts["sentences"] <= hi * counts["refs"]


def test_copy_images_are_real_jpegs_whose_pixels_agree_with_the_masks(paper_copy):
    _, root, _, _ = paper_copy
    instances = json.loads((root / "refer" / "refcoco" / "instances.json").read_text())
    refs = pickle.loads((root / "refer" / "refcoco" / "refs(unc).p").read_bytes())
    assert {c["id"] for c in instances["categories"]} == set(COPY_CATEGORIES)
    assert any(a["iscrowd"] for a in instances["annotations"])
    assert any(len(a["segmentation"]) == 2 for a in instances["annotations"] if not a["iscrowd"])
    smallest = {}
    for a in instances["annotations"]:
        if not a["iscrowd"] and a["area"] < smallest.get(a["image_id"], {"area": np.inf})["area"]:
            smallest[a["image_id"]] = a
    named = {r["ann_id"]: c for r in refs for s in r["sentences"] for c in COLORS if c in s["tokens"]}
    for im in instances["images"]:
        with Image.open(root / "train2014" / im["file_name"]) as pic:
            assert pic.format == "JPEG" and pic.size == (im["width"], im["height"])
            pixels = np.asarray(pic.convert("RGB"), dtype=np.float64)
        a = smallest[im["id"]]  # painted last: all of its mask is visible
        rle = annotation_rle(a["segmentation"], im["height"], im["width"])
        inside = pixels[decode_rle(rle["counts"], im["height"], im["width"]).astype(bool)]
        colour = min(COLORS, key=lambda c: np.abs(np.median(inside, axis=0) - COLORS[c]).max())
        assert np.abs(np.median(inside, axis=0) - COLORS[colour]).max() < 20  # one flat colour (JPEG, noise)
        assert named.get(a["id"], colour) == colour  # and the sentences that name a colour name that one


def test_copy_is_deterministic_and_partitions_differ(tmp_path):
    parts = {"refcocog": {"umd": ["train", "val", "test"], "google": ["train", "val"]}}
    write_copy(tmp_path / "a", tmp_path / "ia", parts, CopySettings())
    write_copy(tmp_path / "b", tmp_path / "ib", parts, CopySettings())
    for name in ("refs(umd).p", "refs(google).p", "instances.json"):
        assert (tmp_path / "a" / "refcocog" / name).read_bytes() == (tmp_path / "b" / "refcocog" / name).read_bytes()
    for pic in (tmp_path / "ia").iterdir():
        assert pic.read_bytes() == (tmp_path / "ib" / pic.name).read_bytes()
    umd = pickle.loads((tmp_path / "a" / "refcocog" / "refs(umd).p").read_bytes())
    google = pickle.loads((tmp_path / "a" / "refcocog" / "refs(google).p").read_bytes())
    assert [r["ref_id"] for r in umd] == [r["ref_id"] for r in google]  # the same refs, split two ways
    assert {r["split"] for r in umd} == {"train", "val", "test"} and {r["split"] for r in google} == {"train", "val"}


def test_ref_labels_follow_refer_test_semantics():
    assert ref_labels(["train", "val", "testA", "testB"]) == ["val", "testA", "testB"]
    assert ref_labels(["train", "val", "testA", "testB", "test"]) == ["val", "testA", "testB"]  # test = A + B
    assert ref_labels(["train", "val", "test"]) == ["val", "test"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"train_imgs": 3}, "unknown field(s) train_imgs"),
        ({"objects_per_image": [4, 2]}, "rehearsal_slice.data.objects_per_image"),
        ({"refs_per_image": 4, "objects_per_image": [3, 5]}, "rehearsal_slice.data.refs_per_image"),
    ],
)
def test_copy_settings_name_the_bad_field(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CopySettings.from_dict(settings)
