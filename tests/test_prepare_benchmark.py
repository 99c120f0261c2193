"""The prepare benchmark's REFER generator at a tiny size: deterministic, valid, and what prepare reads back."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ris.data.prepare import prepare
from ris.data.refer import ReferDataset, decode_rle

SPLITS = ["train", "val", "testA", "testB"]
TINY = {"n_refs": 200, "sentences_per_ref": 2.84, "n_images": 80, "n_anns": 400, "seed": 5}


@pytest.fixture(scope="module")
def bench():
    from benchmarks import prepare_benchmark

    return prepare_benchmark


def test_generated_set_prepares_with_the_reported_counts(bench, tmp_path):
    info = bench.generate_refer(tmp_path / "refer", crowd_frac=0.05, two_polygon_frac=0.1, **TINY)
    bench.make_stand_in_images(tmp_path / "images", info["file_names"])
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


def test_generator_is_deterministic(bench, tmp_path):
    bench.generate_refer(tmp_path / "a", **TINY)
    bench.generate_refer(tmp_path / "b", **TINY)
    for name in ("refs(unc).p", "instances.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    bench.generate_refer(tmp_path / "c", **{**TINY, "seed": 6})
    assert (tmp_path / "a" / "instances.json").read_bytes() != (tmp_path / "c" / "instances.json").read_bytes()


def test_benchmark_script_prints_one_json_line(bench, tmp_path, capsys):
    argv = ["--refs", "120", "--images", "50", "--anns", "200", "--out", str(tmp_path / "work")]
    bench.main(argv)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["counts_match"] is True
    assert result["refs"] == 120 and sum(s["refs"] for s in result["summary"].values()) == 120
    assert result["cpu_count"] >= 1 and result["peak_rss_mb"] > 0
    for key in ("prepare_s", "load_refs_s", "load_instances_s", "rle_s", "tables_s", "parquet_write_s"):
        assert result[key] >= 0
    assert not (tmp_path / "work" / "refer").exists()  # removed without --keep
