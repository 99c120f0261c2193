"""Tests of the synthetic REFER-format dataset generator (ris.data.synthetic)."""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ris.data.synthetic import (
    BACKGROUND,
    COLORS,
    FAMILIES,
    FAMILY_A,
    FAMILY_B,
    REFS_FILE,
    ROBUST_SCALES,
    SyntheticConfig,
    resolve,
    synthesize,
    vocabulary,
)

SMALL = {"train": 20, "val": 6, "testA": 6, "testB": 6}


def _cfg(**kw) -> SyntheticConfig:
    base = {"seed": 3, "image_size": 96, "num_images": dict(SMALL)}
    base.update(kw)
    return SyntheticConfig(**base)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    synthesize(out, _cfg())
    return out


@pytest.fixture(scope="module")
def occluded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("occluded")
    synthesize(out, _cfg(occlusion=True, num_images={"train": 30, "val": 4, "testA": 4, "testB": 4}))
    return out


@pytest.fixture(scope="module")
def textured(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("textured")
    synthesize(out, _cfg(seed=5, occlusion=True, textures=True))
    return out


def _load(out: Path) -> tuple[list[dict], dict, dict, dict]:
    with open(out / REFS_FILE, "rb") as f:
        refs = pickle.load(f)
    inst = json.loads((out / "instances.json").read_text())
    specs = json.loads((out / "specs.json").read_text())
    meta = json.loads((out / "objects.json").read_text())
    return refs, inst, specs, meta


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _image_objects(inst: dict, meta: dict) -> dict[int, list[tuple[int, dict]]]:
    """Per image: (ann_id, object) in annotation order, rebuilt from instances.json + objects.json."""
    cat_name = {c["id"]: c["name"] for c in inst["categories"]}
    images = {im["id"]: im for im in inst["images"]}
    per_image: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    for a in inst["annotations"]:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        m = meta["objects"][str(a["id"])]
        obj = {
            "shape": cat_name[a["category_id"]],
            "color": m["color"],
            "size": m["size"],
            "x": (x + w / 2) / im["width"],
            "y": (y + h / 2) / im["height"],
        }
        per_image[a["image_id"]].append((a["id"], obj))
    return per_image


# --------------------------------------------------------------------------------------------------------


def test_determinism(plain: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthesize(again, _cfg())
    first, second = _files(plain), _files(again)
    assert first.keys() == second.keys()
    assert {"instances.json", REFS_FILE, "specs.json", "objects.json"} <= first.keys()
    assert not [k for k in first if ".tmp" in k], "temporary files left behind"
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs with the same config"

    other = tmp_path / "other"
    synthesize(other, _cfg(seed=4))
    third = _files(other)
    pngs = [k for k in first if k.endswith(".png")]
    assert sum(first[k] != third.get(k) for k in pngs) > len(pngs) // 2


def test_split_sizes_do_not_shift_other_splits(plain: Path, tmp_path: Path) -> None:
    out = tmp_path / "more_train"
    synthesize(out, _cfg(num_images={**SMALL, "train": 23}))
    a, b = _files(plain), _files(out)
    val_pngs = [k for k in a if k.startswith("images/synthetic_1")]
    assert val_pngs and all(a[k] == b[k] for k in val_pngs)


@pytest.mark.parametrize("which", ["plain", "occluded", "textured"])
def test_sentences_resolve_uniquely(which: str, request) -> None:
    out = request.getfixturevalue(which)
    refs, inst, specs, meta = _load(out)
    per_image = _image_objects(inst, meta)
    vocab = set(vocabulary())
    assert len(vocab) < 60
    n_sent = 0
    for ref in refs:
        ann_ids = [aid for aid, _ in per_image[ref["image_id"]]]
        objects = [o for _, o in per_image[ref["image_id"]]]
        target = ann_ids.index(ref["ann_id"])
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"]) == 3
        for s in ref["sentences"]:
            spec = specs[str(s["sent_id"])]
            for scale in ROBUST_SCALES:
                assert resolve(spec, objects, scale) == [target], (s["sent"], spec)
            assert s["tokens"] == s["sent"].split()
            assert s["sent"] == s["sent"].lower()
            assert set(s["tokens"]) <= vocab, s["sent"]
            words = set(s["tokens"])
            assert spec["color"] is None or spec["color"] in words
            assert spec["shape"] is None or spec["shape"] in words
            n_sent += 1
    assert n_sent == len(specs)
    assert len({s["sent_id"] for r in refs for s in r["sentences"]}) == n_sent
    assert len({r["ref_id"] for r in refs}) == len(refs)
    # a mix of strategies is used
    assert any(v["superlative"] for v in specs.values())
    assert any(v["relation"] for v in specs.values())
    assert any(not v["superlative"] and not v["relation"] for v in specs.values())


def _check_masks(out: Path, exact: bool) -> int:
    """Decoded annotation masks == pixels of the object's colour; returns the number of RLE annotations."""
    _, inst, _, meta = _load(out)
    coco = COCO(str(out / "instances.json"))
    palette = {name: np.array(rgb) for name, rgb in meta["colors"].items()}
    names = ["__background__", *palette]
    refs_rgb = np.stack([np.array(BACKGROUND), *palette.values()]).astype(np.int32)
    n_rle = 0
    for im in inst["images"]:
        pixels = np.array(Image.open(out / "images" / im["file_name"]).convert("RGB"))
        h, w = im["height"], im["width"]
        assert pixels.shape == (h, w, 3)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]])), key=lambda a: a["id"])
        labels = np.zeros((h, w), dtype=np.int32)  # 0 = background
        later_full = np.zeros((h, w), dtype=bool)
        for a in reversed(anns):  # reverse draw order: visible part = full polygon minus later objects
            m = meta["objects"][str(a["id"])]
            vis = coco.annToMask(a).astype(bool)
            full = mask_utils.decode(mask_utils.frPyObjects([m["polygon"]], h, w)[0]).astype(bool)
            assert np.array_equal(vis, full & ~later_full), a["id"]
            assert isinstance(a["segmentation"], dict) == (not np.array_equal(vis, full))
            n_rle += isinstance(a["segmentation"], dict)
            rle = coco.annToRLE(a)
            assert a["area"] == int(mask_utils.area(rle)) == int(vis.sum()) > 0
            assert a["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
            assert not (labels[vis] != 0).any(), "visible masks overlap"
            labels[vis] = names.index(m["color"])
            assert tuple(m["rgb"]) == COLORS[m["color"]]
            later_full |= full
        if exact:
            expected = refs_rgb[labels]
            assert np.array_equal(pixels.astype(np.int32), expected), im["file_name"]
        else:  # textures / noise: every pixel is nearest to the colour of its label
            dist = ((pixels[:, :, None, :].astype(np.int32) - refs_rgb[None, None]) ** 2).sum(-1)
            assert np.array_equal(dist.argmin(-1), labels), im["file_name"]
    return n_rle


def test_masks_match_pixels_plain(plain: Path) -> None:
    assert _check_masks(plain, exact=True) == 0


def test_masks_match_pixels_occluded(occluded: Path) -> None:
    assert _check_masks(occluded, exact=True) > 0


def test_masks_match_pixels_textured(textured: Path) -> None:
    assert _check_masks(textured, exact=False) > 0


def test_splits_and_families(plain: Path) -> None:
    refs, inst, _, _ = _load(plain)
    cat_family = {c["id"]: c["supercategory"] for c in inst["categories"]}
    assert set(cat_family.values()) == {FAMILY_A, FAMILY_B}
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    assert len(images) == sum(SMALL.values())
    split_images: dict[str, set[int]] = defaultdict(set)
    split_families: dict[str, set[str]] = defaultdict(set)
    for r in refs:
        a = anns[r["ann_id"]]
        assert a["image_id"] == r["image_id"]
        assert r["category_id"] == a["category_id"]
        assert r["file_name"] == images[r["image_id"]]["file_name"]
        split_images[r["split"]].add(r["image_id"])
        split_families[r["split"]].add(cat_family[a["category_id"]])
    assert {k: len(v) for k, v in split_images.items()} == SMALL
    assert split_families["testA"] == {FAMILY_A}
    assert split_families["testB"] == {FAMILY_B}
    assert split_families["train"] == {FAMILY_A, FAMILY_B}
    for split, family in (("testA", FAMILY_A), ("testB", FAMILY_B)):
        for image_id in split_images[split]:
            shapes = [cat_family[a["category_id"]] for a in anns.values() if a["image_id"] == image_id]
            assert shapes.count(family) >= 2
    refs_per_image = defaultdict(int)
    for r in refs:
        refs_per_image[r["image_id"]] += 1
    assert max(refs_per_image.values()) <= 2
    assert len({a["id"] for a in inst["annotations"]}) == len(inst["annotations"])
    assert len(set(FAMILIES[FAMILY_A]) & set(FAMILIES[FAMILY_B])) == 0


def _assert_plain(obj, path: str = "refs") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str, f"{path}: key {k!r} is {type(k).__name__}"
            _assert_plain(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{path}[{i}]")
    else:
        assert type(obj) in (str, int, float, bool, type(None)), f"{path} is {type(obj).__name__}"


def test_pickle_is_plain(plain: Path) -> None:
    with open(plain / REFS_FILE, "rb") as f:
        refs = pickle.load(f)
    assert type(refs) is list and refs
    _assert_plain(refs)
    assert set(refs[0]) == {
        "ref_id",
        "ann_id",
        "image_id",
        "split",
        "category_id",
        "file_name",
        "sent_ids",
        "sentences",
    }
    assert set(refs[0]["sentences"][0]) == {"tokens", "raw", "sent", "sent_id"}


def test_reads_with_refer_loader(plain: Path) -> None:
    refer = pytest.importorskip("ris.data.refer")
    ds = refer.ReferDataset.load(plain, "unc")
    assert len(ds.split("testA")) == len([r for r in ds.refs if r["split"] == "testA"]) > 0


def test_config_from_dict() -> None:
    with pytest.raises(ValueError, match="bogus"):
        SyntheticConfig.from_dict({"bogus": 1})
    cfg = SyntheticConfig.from_dict({"seed": 2, "objects_per_image": [3, 4], "num_images": {"val": 2}})
    assert cfg.objects_per_image == (3, 4) and cfg.num_images == {"val": 2}
    assert SyntheticConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="num_images"):
        SyntheticConfig(num_images={"test": 3})
