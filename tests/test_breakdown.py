"""What each method can read: expression types from the generator's specs, the per-type table and figure."""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ris.cli import main
from ris.data.synthetic import EXPRESSION_TYPES, REFS_FILE, SyntheticConfig, expression_type, synthesize
from ris.report.breakdown import expression_type_table, load_expression_types, plot_expression_types
from ris.report.stats import wilson_interval


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small synthetic dataset large enough that the generator produces every expression type."""
    root = tmp_path_factory.mktemp("breakdown")
    sizes = {"train": 60, "val": 30, "testA": 0, "testB": 0}
    synthesize(root, SyntheticConfig(seed=3, image_size=64, num_images=sizes))
    return root


def val_sentences(root: Path) -> list[int]:
    refs = pickle.loads((root / REFS_FILE).read_bytes())
    return [s for r in refs if r["split"] == "val" for s in r["sent_ids"]]


def fabricated_samples(path: Path, sent_ids: list[int], seed: int) -> pd.DataFrame:
    """A samples.csv as `ris evaluate` writes it (the columns the breakdown reads, and a few more)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "ref_id": [s // 10 for s in sent_ids],
            "sent_id": sent_ids,
            "iou": rng.uniform(0, 1, len(sent_ids)),
            "intersection": 1,
            "union": 2,
            "refers": rng.integers(0, 2, len(sent_ids)).astype(float),
        }
    )
    df.loc[df.index[::7], "refers"] = np.nan  # not eligible
    df.to_csv(path, index=False)
    return df


def textbook_wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_every_spec_the_generator_writes_has_a_type_and_every_type_occurs(dataset):
    specs = json.loads((dataset / "specs.json").read_text())
    produced = Counter(expression_type(s) for s in specs.values())
    assert set(produced) == set(EXPRESSION_TYPES), produced  # each type is produced, none is unknown
    assert expression_type({"shape": "star", "color": None, "size": None}) == "shape"
    assert expression_type({"shape": None, "color": "red", "size": None, "superlative": None}) == "colour"
    assert expression_type({"shape": None, "color": None, "size": "small"}) == "size"
    assert expression_type({"shape": "circle", "color": "red", "size": None}) == "several attributes"
    assert expression_type({"shape": "circle", "color": None, "size": None, "superlative": "leftmost"}) == "superlative"
    landmark = {"shape": "star", "color": "blue", "size": None}
    spec = {"shape": "circle", "color": None, "size": None, "relation": {"direction": "left", "landmark": landmark}}
    assert expression_type(spec) == "relation"


def test_table_lists_every_type_with_the_split_counts(dataset, tmp_path):
    sents = val_sentences(dataset)
    a = fabricated_samples(tmp_path / "a.csv", sents, seed=0)
    fabricated_samples(tmp_path / "b.csv", sents, seed=1)
    table = expression_type_table([("A", tmp_path / "a.csv"), ("B", tmp_path / "b.csv")], dataset / "specs.json")
    assert list(table["run"].unique()) == ["A", "B"]
    assert list(table.loc[table["run"] == "A", "expression_type"]) == list(EXPRESSION_TYPES)
    types = load_expression_types(dataset / "specs.json")
    a["type"] = a["sent_id"].map(types)
    got = table[table["run"] == "A"].set_index("expression_type")
    for kind, g in a.groupby("type"):
        assert got.loc[kind, "samples"] == len(g)
        assert got.loc[kind, "mIoU"] == pytest.approx(100 * g["iou"].mean())
        eligible = g["refers"].dropna()
        assert got.loc[kind, "refacc_samples"] == len(eligible)
        assert got.loc[kind, "RefAcc"] == pytest.approx(100 * eligible.mean())
    assert got["samples"].sum() == len(sents)


def test_refacc_interval_on_a_known_case(tmp_path):
    assert wilson_interval(0, 10)[1] == pytest.approx(1.959963984540054**2 / (10 + 1.959963984540054**2))
    assert wilson_interval(85, 100) == pytest.approx(textbook_wilson(85, 100))
    assert wilson_interval(85, 100) == pytest.approx((0.7672, 0.9069), abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 5)[0] == 0.0
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(3, 2)
    # 17 of 20 shape sentences refer, 3 colour sentences are not eligible
    specs = {str(i): {"shape": "star", "color": None, "size": None} for i in range(20)}
    specs |= {str(i): {"shape": None, "color": "red", "size": None} for i in range(20, 23)}
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    refers = [1.0] * 17 + [0.0] * 3 + [np.nan] * 3
    pd.DataFrame({"sent_id": range(23), "iou": 0.5, "refers": refers}).to_csv(tmp_path / "s.csv", index=False)
    t = expression_type_table([("run", tmp_path / "s.csv")], tmp_path / "specs.json").set_index("expression_type")
    low, high = textbook_wilson(17, 20)
    assert t.loc["shape", ["RefAcc", "RefAcc_ci95_low", "RefAcc_ci95_high"]].tolist() == pytest.approx(
        [85.0, 100 * low, 100 * high]
    )
    assert t.loc["colour", "samples"] == 3 and t.loc["colour", "refacc_samples"] == 0
    assert math.isnan(t.loc["colour", "RefAcc"]) and t.loc["colour", "mIoU"] == pytest.approx(50.0)
    assert t.loc["relation", "samples"] == 0 and math.isnan(t.loc["relation", "mIoU"])


def test_bad_or_missing_specs_is_a_clear_error(tmp_path):
    pd.DataFrame({"sent_id": [1], "iou": [0.5], "refers": [1.0]}).to_csv(tmp_path / "s.csv", index=False)
    runs = [("run", tmp_path / "s.csv")]
    with pytest.raises(FileNotFoundError, match=r"specs\.json: no specs\.json"):
        expression_type_table(runs, tmp_path / "specs.json")
    (tmp_path / "specs.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"specs\.json: not valid JSON"):
        expression_type_table(runs, tmp_path / "specs.json")
    (tmp_path / "specs.json").write_text("[]")
    with pytest.raises(ValueError, match="expected a non-empty JSON object sent_id -> semantic spec"):
        expression_type_table(runs, tmp_path / "specs.json")
    (tmp_path / "specs.json").write_text(json.dumps({"1": {"shape": "star"}}))
    with pytest.raises(ValueError, match=r"specs\.json: sentence '1': not a semantic spec \(expected a mapping"):
        expression_type_table(runs, tmp_path / "specs.json")
    (tmp_path / "specs.json").write_text(json.dumps({"2": {"shape": "star", "color": None, "size": None}}))
    with pytest.raises(ValueError, match=r"s\.csv: 1 sentence\(s\) not in .*specs\.json \(e\.g\. sent_id 1\)"):
        expression_type_table(runs, tmp_path / "specs.json")
    pd.DataFrame({"sent_id": [2], "iou": [0.5]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"s\.csv: not a samples\.csv of `ris evaluate` \(no column refers\)"):
        expression_type_table(runs, tmp_path / "specs.json")


def test_cli_writes_table_and_figure(dataset, tmp_path):
    from tests.helpers import assert_valid_figure

    sents = val_sentences(dataset)
    fabricated_samples(tmp_path / "a.csv", sents, seed=0)
    out = tmp_path / "out"
    argv = ["expression-types", "--specs", str(dataset / "specs.json"), "--run", f"LAVT (Swin-B)={tmp_path / 'a.csv'}"]
    argv += ["--out-csv", str(out / "t.csv"), "--out-md", str(out / "t.md"), "--caption", "Demo."]
    argv += ["--out-plot", str(out / "f.png"), str(out / "f.pdf")]
    assert main(argv) == 0
    csv = pd.read_csv(out / "t.csv")
    assert list(csv["expression_type"]) == list(EXPRESSION_TYPES)
    md = (out / "t.md").read_text()
    assert md.startswith("**Table `expression_types`.** mIoU and RefAcc per expression type. Demo.")
    assert all(f"| LAVT (Swin-B) | {t} |" in md for t in EXPRESSION_TYPES)
    assert_valid_figure(out / "f.png")
    assert_valid_figure(out / "f.pdf")
    empty = csv.assign(RefAcc=np.nan)  # nothing eligible: the figure says so instead of failing
    plot_expression_types(empty, [out / "empty.png"])
    assert (out / "empty.png").stat().st_size > 0
    bad = ["expression-types", "--specs", str(dataset / "specs.json"), "--run", "no-name"]
    assert main([*bad, "--out-csv", "x", "--out-md", "y"]) == 2
