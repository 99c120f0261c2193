"""Figures: every kind is written as a valid, non-blank PNG and PDF, from fixture metrics and predictions."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ris.config import table_runs
from ris.data.prepare import prepare, read_split
from ris.data.refer import decode_rle
from ris.evaluation.results import encode_masks
from ris.report.curves import plot_num_masks, plot_precision, plot_training
from ris.report.grids import plot_qualitative, plot_swap, select_samples, select_swap_pairs
from ris.report.spec import table_figures, table_spec
from tests.helpers import assert_valid_figure, repo_config, write_fixture_metrics


@pytest.fixture(scope="module")
def prepared(tiny_synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(tiny_synthetic, "unc", ["train", "val"], out, tiny_synthetic / "images")
    return out


def fake_samples(split_table: Path, out: Path, shift: int, seed: int) -> Path:
    """A samples.csv like ``ris evaluate`` writes, with predictions = ground truth shifted by ``shift`` px."""
    table = read_split(split_table)
    rows, rng = [], np.random.default_rng(seed)
    size = 64
    for r in table.itertuples():
        gt = decode_rle(r.rle, int(r.height), int(r.width)).astype(bool)
        gt = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((size, size), Image.NEAREST)).astype(bool)
        pred = np.roll(gt, shift + int(rng.integers(0, 6)), axis=1)
        inter, union = int((pred & gt).sum()), int((pred | gt).sum())
        rle = encode_masks(torch.from_numpy(pred[None]))[0]
        rows.append(
            {"ref_id": r.ref_id, "sent_id": r.sent_id, "image_id": r.image_id, "file_name": r.file_name,
             "sentence": r.sentence, "intersection": inter, "union": union, "iou": inter / union if union else 0.0,
             "pred_size": size, "pred_rle": rle}
        )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def fake_history(path: Path, epochs: int, offset: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"epoch": e, "train_loss": 1.0 / e + offset, "val_oIoU": 10 * e + offset, "val_mIoU": 9 * e})
        for e in range(1, epochs + 1)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_precision_and_num_masks_figures(tmp_path):
    cfg = repo_config(tmp_path / "results", seeds=[0, 1])
    for table in ("mask_number", "main", "backbone_darknet53"):
        files = write_fixture_metrics(cfg, table)
        spec = table_spec(cfg, table)
        outs = [tmp_path / f"{table}_precision.png", tmp_path / f"{table}_precision.pdf"]
        df = plot_precision(spec, files, outs)
        assert set(df["numbers"]) >= {"reproduced", "published"}
        for p in outs:
            assert_valid_figure(p)
    spec = table_spec(cfg, "mask_number")
    assert "num_masks" in table_figures(spec) and "num_masks" not in table_figures(table_spec(cfg, "main"))
    outs = [tmp_path / "n.png", tmp_path / "n.pdf"]
    df = plot_num_masks(spec, write_fixture_metrics(cfg, "mask_number"), outs)
    assert sorted(set(df["N"])) == sorted({r["num_masks"] for r in spec["runs"]})
    for p in outs:
        assert_valid_figure(p)


def test_precision_figure_with_every_run_missing_is_still_drawn(tmp_path):
    cfg = repo_config(tmp_path / "results")
    spec = table_spec(cfg, "backbone_resnet101")
    df = plot_precision(spec, [], [tmp_path / "p.png"])
    assert set(df["numbers"]) == {"published", "published (cited)"}  # nothing reproduced yet: no zeros
    assert_valid_figure(tmp_path / "p.png")


def test_training_curves_of_every_run(tmp_path):
    cfg = repo_config(tmp_path / "results", seeds=[0, 1])
    spec = table_spec(cfg, "mask_number")
    histories = [
        fake_history(tmp_path / "runs" / k.path / "history.jsonl", 3, 0.1 * i)
        for i, k in enumerate(table_runs(cfg, "mask_number"))
    ]
    outs = [tmp_path / "t.png", tmp_path / "t.pdf"]
    df = plot_training(spec, histories, outs)
    assert sorted(set(df["run"])) == sorted(f"N={r['num_masks']}" for r in spec["runs"])
    assert len(df) == len(spec["runs"]) * 2 * 3  # runs x seeds x epochs
    for p in outs:
        assert_valid_figure(p)
    with pytest.raises(ValueError, match="not in a run directory"):
        plot_training(spec, [tmp_path / "history.jsonl"], outs)


def test_qualitative_grids_show_successes_and_failures(tmp_path, prepared, tiny_synthetic):
    cfg = repo_config(tmp_path / "results")
    cfg["tables"]["small"] = copy.deepcopy(cfg["tables"]["main"]) | {
        "runs": [
            {"method": "lavt", "backbone": "swin_b"},
            {"method": "coupalign", "backbone": "swin_b", "num_masks": 100},
        ]
    }
    spec = table_spec(cfg, "small")
    split_table = prepared / "val.parquet"
    samples = [fake_samples(split_table, tmp_path / f"s{i}.csv", shift=3 * i, seed=i) for i in range(2)]
    outs_ok = [tmp_path / "ok.png", tmp_path / "ok.pdf"]
    outs_bad = [tmp_path / "bad.png", tmp_path / "bad.pdf"]
    chosen = plot_qualitative(spec, samples, split_table, tiny_synthetic / "images", outs_ok, outs_bad, k=3)
    for p in outs_ok + outs_bad:
        assert_valid_figure(p)
    focus = pd.read_csv(samples[-1])
    assert chosen["successes"]["iou"].min() >= chosen["failures"]["iou"].max()
    assert chosen["successes"]["iou"].iloc[0] == focus["iou"].max()
    assert chosen["failures"]["iou"].iloc[0] == focus["iou"].min()
    assert chosen["successes"]["ref_id"].is_unique  # one sentence per object
    # A run whose samples.csv is absent shows as missing in its column, the grid is still drawn.
    plot_qualitative(
        spec, [tmp_path / "absent.csv", samples[1]], split_table, tiny_synthetic / "images", outs_ok, outs_bad
    )
    assert_valid_figure(outs_ok[0])


def test_swap_grid_shows_two_sentences_of_one_image(tmp_path, prepared, tiny_synthetic):
    cfg = repo_config(tmp_path / "results")
    spec = table_spec(cfg, "main")
    split_table = prepared / "val.parquet"
    samples = fake_samples(split_table, tmp_path / "s.csv", shift=0, seed=0)
    outs = [tmp_path / "swap.png", tmp_path / "swap.pdf"]
    pairs = plot_swap(spec, samples, split_table, tiny_synthetic / "images", outs, k=3)
    for p in outs:
        assert_valid_figure(p)
    assert 1 <= len(pairs) <= 3
    for a, b in pairs:  # same image, two different refs
        assert a["image_id"] == b["image_id"] and a["ref_id"] != b["ref_id"]
    lower = [min(a["iou"], b["iou"]) for a, b in pairs]
    assert lower == sorted(lower, reverse=True)


def test_select_swap_pairs_is_deterministic():
    df = pd.DataFrame(
        {"image_id": [1, 1, 2, 2, 3], "ref_id": [1, 2, 3, 4, 5], "sent_id": [10, 20, 30, 40, 50],
         "iou": [0.9, 0.2, 0.6, 0.7, 1.0]}
    )  # fmt: skip
    assert [(int(a["ref_id"]), int(b["ref_id"])) for a, b in select_swap_pairs(df, 5)] == [(3, 4), (1, 2)]


def test_select_samples_is_deterministic():
    df = pd.DataFrame({"ref_id": [1, 1, 2, 3, 4], "sent_id": [10, 11, 20, 30, 40], "iou": [0.9, 0.9, 0.1, 0.5, 0.1]})
    assert select_samples(df, 2, worst=False)["sent_id"].tolist() == [10, 30]
    assert select_samples(df, 2, worst=True)["sent_id"].tolist() == [20, 40]
