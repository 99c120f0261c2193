"""Paper tables: published facts, layout (golden files), seeds, missing runs, the `ris tables` command.

That each published number is the one its source prints: tests/test_published_sources.py.
Golden files under tests/golden/ pin the Markdown and LaTeX of the four tables of config.yaml on fixed
metrics. After an intended layout change, regenerate them with ``RIS_UPDATE_GOLDEN=1 pytest tests/test_tables.py``
and review the diff.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from ris.cli import main
from ris.report.build import build_table
from ris.report.published import METHOD_DISPLAY, default_path, load_published, method_display, method_key
from ris.report.render import to_latex, to_markdown, write_tables
from ris.report.spec import spec_datasets, table_spec
from tests.helpers import REPO, repo_config, write_fixture_metrics

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("RIS_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"{path} missing; generate it with RIS_UPDATE_GOLDEN=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file (RIS_UPDATE_GOLDEN=1 to regenerate)"


# ---------------------------------------------------------------------------------------------- facts


def test_method_names_are_mapped_in_one_place():
    for key, display in METHOD_DISPLAY.items():
        assert method_display(key) == display and method_key(display) == key
    assert method_display("LSCM") == "LSCM"  # cited methods keep their printed name
    facts = load_published()
    trained_in_facts = {m for m in facts["method"] if method_key(m) in METHOD_DISPLAY}
    assert trained_in_facts == {"LAVT", "CoupAlign"}


def test_conflicting_published_numbers_are_refused(tmp_path):
    df = pd.read_csv(default_path())
    bad = pd.concat([df, df.iloc[[0]].assign(value=1.0)])
    bad.to_csv(tmp_path / "facts.csv", index=False)
    with pytest.raises(ValueError, match="conflicting values"):
        load_published(tmp_path / "facts.csv")
    df.assign(source="").to_csv(tmp_path / "nosource.csv", index=False)
    with pytest.raises(ValueError, match="needs a source"):
        load_published(tmp_path / "nosource.csv")


# ---------------------------------------------------------------------------------------------- golden layout


@pytest.mark.parametrize("table", ["backbone_resnet101", "backbone_darknet53", "mask_number", "main"])
def test_paper_tables_match_golden_files(tmp_path, table):
    cfg = repo_config(tmp_path / "results")
    files = write_fixture_metrics(cfg, table)
    spec = table_spec(cfg, table)
    df = write_tables(spec, files, tmp_path / "tables")
    md = (tmp_path / "tables" / f"{table}.md").read_text()
    tex = (tmp_path / "tables" / f"{table}.tex").read_text()
    check_golden(f"{table}.md", md)
    check_golden(f"{table}.tex", tex)
    # Every Markdown table line has the same number of cells as its header.
    for block in re.split(r"\n\n", md):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({line.count("|") for line in rows}) == 1, block
    # The CSV is long: one number per line, reproduced cells for every (run, column).
    csv = pd.read_csv(tmp_path / "tables" / f"{table}.csv")
    assert len(csv) == len(df)
    n_cols = sum(len(s) for _, s in spec_datasets(spec)) * len(spec["metrics"])
    assert (csv["numbers"] == "reproduced").sum() == len(spec["runs"]) * n_cols


def test_rows_and_columns_follow_the_papers():
    cfg = repo_config(Path("/nonexistent"))
    t1 = to_markdown(build_table(table_spec(cfg, "backbone_resnet101"), None), table_spec(cfg, "backbone_resnet101"))
    lines = [line for line in t1.splitlines() if line.startswith("| ") and not line.startswith("|  |")]
    # CoupAlign suppl. Table 1: LSCM, CMPC, EFN, LAVT, CoupAlign; oIoU, prec@0.5..0.9; then the demo's
    # baselines and its referring-accuracy column.
    baselines = ["all foreground", "a random object", "the largest object"]
    assert [line.split("|")[1].strip() for line in lines] == [
        "Method",
        "LSCM",
        "CMPC",
        "EFN",
        "LAVT",
        "CoupAlign",
    ] + baselines
    assert lines[0].split("|")[3:-1] == [" oIoU ", " P@0.5 ", " P@0.6 ", " P@0.7 ", " P@0.8 ", " P@0.9 ", " RefAcc "]
    t3 = to_markdown(build_table(table_spec(cfg, "mask_number"), None), table_spec(cfg, "mask_number"))
    firsts = [line.split("|")[1].strip() for line in t3.splitlines() if line.startswith("| ")]
    assert [x for x in firsts if x] == ["N", "0", "20", "50", "100", "150", "200"] + baselines
    # The spec reaches `ris tables` as JSON: the column order must survive any key order.
    spec = json.loads(json.dumps(table_spec(cfg, "main"), sort_keys=True))
    main_md = to_markdown(build_table(spec, None), spec)
    header = next(line for line in main_md.splitlines() if line.startswith("| Method"))
    assert header.split("|")[4:-1] == [
        f" {d} {s} "
        for d, s in [
            ("RefCOCO", "val"), ("RefCOCO", "testA"), ("RefCOCO", "testB"),
            ("RefCOCO+", "val"), ("RefCOCO+", "testA"), ("RefCOCO+", "testB"),
            ("RefCOCOg (U)", "val"), ("RefCOCOg (U)", "test"), ("RefCOCOg (G)", "val"),
        ]
    ]  # fmt: skip
    assert "*oIoU*" in main_md and "*mIoU*" in main_md


# ---------------------------------------------------------------------------------------------- numbers


def small_spec(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["tables"] = {
        "t": {
            "caption": "A small table.",
            "datasets": {"refcoco": ["val", "testA"]},
            "metrics": ["oIoU", "mIoU"],
            "published": [{"method": "LTS", "backbone": "darknet53"}],
            "published_from": "main",
            "runs": [
                {"method": "lavt", "backbone": "swin_b"},
                {"method": "coupalign", "backbone": "swin_b", "num_masks": 100},
                {"method": "eavl", "backbone": "swin_b"},
            ],
        }
    }
    return cfg


def test_seeds_give_mean_and_std_and_missing_runs_show_as_missing(tmp_path):
    cfg = small_spec(repo_config(tmp_path / "results", seeds=[0, 1]))
    # eavl has no run at all; coupalign lacks seed 1.
    files = write_fixture_metrics(
        cfg, "t", skip={("eavl-swin_b-n0", 0), ("eavl-swin_b-n0", 1), ("coupalign-swin_b-n100", 1)}
    )
    spec = table_spec(cfg, "t")
    df = write_tables(spec, files, tmp_path / "tables")
    md = (tmp_path / "tables" / "t.md").read_text()
    check_golden("seeds_and_missing.md", md)

    lavt = df[(df.method == "LAVT") & (df.numbers == "reproduced") & (df.split == "val") & (df.metric == "oIoU")]
    assert lavt["value"].item() == pytest.approx(40.25)  # seeds 0 and 1: 40.0 and 40.5
    assert lavt["std"].item() == pytest.approx(0.353553, abs=1e-5)
    # 95% CI of the mean of 2 seeds: 40.25 ± t(0.975, 1) 12.706 x 0.354 / sqrt(2)
    assert (lavt["ci95_low"].item(), lavt["ci95_high"].item()) == pytest.approx((37.0734, 43.4266), abs=1e-4)
    assert "| LAVT | Swin-B | reproduced | 40.25 ± 0.35 [37.07, 43.43] | 42.25 ± 0.35 [39.07, 45.43] |" in md
    assert "47.00 ± 0.00" not in md and "| 47.00 (1/2 seeds) |" in md  # coupalign: one seed only
    eavl = df[(df.method == "EAVL") & (df.numbers == "reproduced")]
    assert (eavl["status"] == "missing").all() and eavl["value"].isna().all()
    assert "| EAVL | Swin-B | reproduced | missing | missing |" in md
    assert " 0.00 " not in md
    # Published beside reproduced, and the difference.
    diff = df[(df.method == "LAVT") & (df.numbers == "difference") & (df.split == "val") & (df.metric == "oIoU")]
    assert diff["value"].item() == pytest.approx(40.25 - 72.73)
    assert "| LTS | Darknet-53 | published (cited) | 65.43 | 67.76 |" in md
    assert "No published numbers on file for EAVL" in md
    assert "mean ± std over 2 seeds" in md


def test_demo_captions_say_synthetic_and_paper_captions_do_not(tmp_path):
    cfg = repo_config(tmp_path)
    spec = table_spec(cfg, "main")
    assert "synthetic" in spec["note"] and "same synthetic set" in spec["note"]
    paper = copy.deepcopy(cfg)
    paper["scale"] = "paper"
    assert table_spec(paper, "main")["note"] == ""
    assert table_spec(paper, "main")["dataset_used"]["refcocog_umd"] == "refcocog_umd"


def test_a_cited_method_without_published_numbers_is_a_clear_error(tmp_path):
    cfg = small_spec(repo_config(tmp_path / "results"))
    cfg["tables"]["t"]["published"] = [{"method": "NoSuchNet", "backbone": "resnet101"}]
    with pytest.raises(ValueError, match="cited method 'NoSuchNet'.*no published numbers under table 'main'"):
        write_tables(table_spec(cfg, "t"), [], tmp_path / "out")


def test_latex_is_booktabs_and_balanced(tmp_path):
    cfg = repo_config(tmp_path / "results")
    spec = table_spec(cfg, "main")
    tex = to_latex(build_table(spec, None), spec)
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "\\hline" not in tex
    assert "\\cmidrule(lr){4-6}" in tex and "\\multicolumn{3}{c}{RefCOCO}" in tex
    body = re.sub(r"\\[{}]", "", tex)
    assert body.count("{") == body.count("}")
    assert tex.count("\\begin{") == tex.count("\\end{")
    n_cols = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
    for line in tex.splitlines():
        if line.rstrip().endswith("\\\\") and "multicolumn" not in line:
            assert line.count("&") == n_cols - 1, line


def test_cli_tables_from_config_marks_everything_missing_before_any_run(tmp_path, capsys):
    cfg_path = tmp_path / "config.yaml"
    cfg = repo_config(tmp_path / "results")
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "workflow" / "schemas").mkdir(parents=True)
    (tmp_path / "workflow" / "schemas" / "config.schema.yaml").write_text(
        (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    )
    rc = main(["tables", "--config", str(cfg_path), "--table", "mask_number", "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    md = (tmp_path / "out" / "mask_number.md").read_text()
    assert md.count("| reproduced | missing | missing |") == 6
    assert {p.suffix for p in (tmp_path / "out").iterdir()} == {".csv", ".md", ".tex", ".html"}
    rc = main(["tables", "--config", str(cfg_path), "--table", "nope", "--out-dir", str(tmp_path / "out")])
    assert rc == 2 and "no table 'nope'" in capsys.readouterr().err
