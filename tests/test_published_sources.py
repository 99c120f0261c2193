"""Every published number of ``ris/resources/published_results.csv`` is the one its cited source prints.

The sources are kept as short verbatim excerpts under ``tests/fixtures/published_sources/`` (provenance in
``tests/fixtures/README.md``). Each excerpt is read into cells (method, dataset, split, metric and, where the
source prints them, backbone or number of masks N, with the printed text); every row of the CSV must meet
exactly one cell of the excerpt its ``source`` names, with the same number. The sources the CSV copies whole
(the CoupAlign supplementary Tables 1-3, LAVT's README table) must also have every printed number in the CSV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
import pytest

from ris.report.published import default_path, load_published
from tests.helpers import FIXTURES

SOURCES = FIXTURES / "published_sources"

#: the column headers of the sources -> the CSV's metric names
METRIC = {"oIoU": "oIoU", "mIoU": "mIoU", "Overall IoU": "oIoU", "Mean IoU": "mIoU"}
METRIC.update({f"{p}@0.{k}": f"P@0.{k}" for p in ("prec", "P") for k in range(5, 10)})

#: LAVT README's row labels -> (dataset, split)
LAVT_ROWS = {
    "RefCOCO val": ("refcoco", "val"), "RefCOCO test A": ("refcoco", "testA"), "RefCOCO test B": ("refcoco", "testB"),
    "RefCOCO+ val": ("refcoco+", "val"), "RefCOCO+ test A": ("refcoco+", "testA"),
    "RefCOCO+ test B": ("refcoco+", "testB"), "G-Ref val (UMD)": ("refcocog_umd", "val"),
    "G-Ref test (UMD)": ("refcocog_umd", "test"), "G-Ref val (Goog.)": ("refcocog_google", "val"),
}  # fmt: skip

#: the survey's Table 2 columns, left to right (RefCOCO, RefCOCO+, RefCOCOg UMD)
SURVEY_COLUMNS = [(d, s) for d in ("refcoco", "refcoco+") for s in ("val", "testA", "testB")]
SURVEY_COLUMNS += [("refcocog_umd", "val"), ("refcocog_umd", "test")]


@dataclass(frozen=True)
class Cell:
    """One printed number: where it stands (None: the source does not say) and its text."""

    method: str
    dataset: str
    split: str
    metric: str
    text: str
    backbone: str | None = None
    num_masks: int | None = None

    def holds(self, row: pd.Series) -> bool:
        """Whether a CSV row claims this cell's place."""
        same = (row.method, row.dataset, row.split, row.metric) == (self.method, self.dataset, self.split, self.metric)
        same &= self.backbone is None or row.backbone == self.backbone
        return same and (self.num_masks is None or (pd.notna(row.num_masks) and int(row.num_masks) == self.num_masks))


def coupalign_supplementary(table: int) -> list[Cell]:
    """Tables 1-3 of the CoupAlign supplementary (tab-separated, each followed by its caption). Tables 1 and 2 are
    on RefCOCO val (the excerpt says so); Table 3's dataset is not printed: RefCOCO val, as the CSV assumes."""
    blocks: dict[int, list[list[str]]] = {}
    rows: list[list[str]] = []
    for line in (SOURCES / "coupalign_supplementary.txt").read_text().splitlines():
        if "\t" in line:
            rows.append(line.split("\t"))
        elif m := re.match(r"Table (\d):", line):
            blocks[int(m.group(1))], rows = rows, []
    header, *body = blocks[table]
    cells = []
    for label, *values in body:
        for column, text in zip(header[1:], values):
            if text == "-":
                continue
            if table == 3:  # "Num of segments" N; N = 0: no sentence-mask alignment
                cell = Cell("CoupAlign", "refcoco", "val", METRIC[column], text, num_masks=int(label))
            else:  # "LSCM-Resnet101 [5]", "LAVT [8]-Resnet101", "CoupAlign-Darknet53 (ours)"
                backbone = re.search(r"Resnet101|Darknet53", label).group().lower()
                method = re.match(r"\w+", label).group()
                cell = Cell(method, "refcoco", "val", METRIC[column], text, backbone=backbone)
            cells.append(cell)
    return cells


def lavt_readme() -> list[Cell]:
    """The cross-entropy table of LAVT's README (Markdown)."""
    text = (SOURCES / "lavt_readme_results.md").read_text()
    lines = [line.strip().strip("|").split("|") for line in text.splitlines()]
    table = [[c.strip() for c in cols] for cols in lines if len(cols) > 1 and not cols[0].strip().startswith(":")]
    header, *body = table
    return [
        Cell("LAVT", *LAVT_ROWS[label], METRIC[column], text)
        for label, *values in body
        for column, text in zip(header[1:], values)
    ]


def survey_table2() -> list[Cell]:
    """Rows of Table 2 of Ding et al. (2025), as printed: method, references, venue, eight numbers. Its caption says
    mIoU, but the numbers are the methods' own oIoU (LAVT's row is LAVT's README oIoU column: tested below). Rows
    with seven numbers carry one RefCOCOg number whose column the text does not tell: only the first six count."""
    cells = []
    for line in (SOURCES / "ding2025_survey_table2.txt").read_text().splitlines():
        m = re.fullmatch(r"(?P<label>.+?\])\s+(?P<values>[-\d. ]+)", line)
        if not m:
            continue
        values = m.group("values").split()
        assert len(values) in (7, 8), line
        method = re.match(r"[\w-]+", m.group("label")).group()
        places = SURVEY_COLUMNS if len(values) == 8 else SURVEY_COLUMNS[:6]
        cells += [Cell(method, d, s, "oIoU", t) for (d, s), t in zip(places, values) if t != "-"]
    return cells


def excerpt(source: str) -> tuple[list[Cell], bool]:
    """The cells of the excerpt a CSV ``source`` cites, and whether the CSV must hold all of them."""
    if m := re.match(r"CoupAlign \(NeurIPS 2022\) supplementary material, Table (\d)\b", source):
        return coupalign_supplementary(int(m.group(1))), True
    if source.startswith("LAVT official repository README (yz93/LAVT-RIS)"):
        return lavt_readme(), True
    if re.search(r"\bRIS survey\b.*\bTable 2\b", source):
        return survey_table2(), False
    raise KeyError(f"no excerpt of the source {source!r} under {SOURCES}")


def mismatches(facts: pd.DataFrame) -> list[str]:
    """What in ``facts`` (the published CSV's rows) its sources do not print, and what they print that it lacks."""
    problems = []
    for source, rows in facts.groupby("source", sort=False):
        try:
            cells, whole = excerpt(source)
        except KeyError as e:
            problems.append(str(e.args[0]))
            continue
        for row in rows.itertuples():
            n = "-" if pd.isna(row.num_masks) else int(row.num_masks)
            where = f"{row.method} {row.backbone} N={n} {row.dataset} {row.split} {row.metric}"
            found = [c for c in cells if c.holds(row)]
            if len(found) != 1:
                problems.append(f"{where}: {len(found)} cells of {source!r} stand there")
            elif float(found[0].text) != row.value:
                problems.append(f"{where}: {row.value} in the CSV, {found[0].text} in {source!r}")
        if whole:
            held = [c for c in cells if any(c.holds(r) for r in rows.itertuples())]
            problems += [f"{c} of {source!r} is not in the CSV" for c in cells if c not in held]
    return problems


@pytest.fixture(scope="module")
def facts() -> pd.DataFrame:
    return pd.read_csv(default_path())


def test_every_published_number_is_its_source(facts):
    problems = mismatches(facts)
    assert not problems, "\n".join(problems)


def test_a_mistyped_number_is_caught(facts):
    """A swapped digit, a number under the wrong split, a dropped row and an unknown source all fail."""
    bad = facts.copy()
    typo = bad.index[(bad.method == "CoupAlign") & (bad.backbone == "resnet101") & (bad.metric == "oIoU")][0]
    bad.loc[typo, "value"] = 68.39  # printed: 68.93
    vlt = bad.index[(bad.method == "VLT") & (bad.table == "main") & (bad.dataset == "refcoco") & (bad.split == "testA")]
    bad.loc[vlt[0], "split"] = "testB"  # printed under testA
    dropped = bad.index[(bad.table == "mask_number") & (bad.num_masks == 150) & (bad.metric == "P@0.9")]
    bad = bad.drop(dropped)
    bad.loc[bad.index[-1], "source"] = "a talk, slide 3"  # a survey row: the survey is not copied whole
    found = mismatches(bad)
    assert any("68.39 in the CSV, 68.93" in p for p in found), found
    assert any(p.startswith("VLT darknet53 N=- refcoco testB oIoU: 68.29 in the CSV, 62.73") for p in found), found
    assert any("num_masks=150" in p and "'P@0.9'" in p and "not in the CSV" in p for p in found), found
    assert any("no excerpt of the source 'a talk, slide 3'" in p for p in found), found
    assert len(found) == 4, found


def test_survey_numbers_are_oiou():
    """The survey's caption says mIoU; its LAVT row is LAVT's own oIoU (README), not its mIoU."""
    survey = {(c.dataset, c.split): c.text for c in survey_table2() if c.method == "LAVT"}
    readme = {(c.dataset, c.split, c.metric): c.text for c in lavt_readme()}
    assert len(survey) == 8
    assert all(float(t) == float(readme[d, s, "oIoU"]) != float(readme[d, s, "mIoU"]) for (d, s), t in survey.items())


def test_published_facts_load_with_sources():
    facts = load_published()
    assert (facts["source"].str.len() > 10).all()
    one = facts[(facts.table == "mask_number") & (facts.num_masks == 100) & (facts.metric == "mIoU")]
    assert one["value"].tolist() == [75.49]
    # Table 2: VLT prints only oIoU and P@0.5 ("-" elsewhere): those numbers are absent, not zero.
    vlt = facts[(facts.table == "backbone_darknet53") & (facts.method == "VLT")]
    assert set(vlt["metric"]) == {"oIoU", "P@0.5"}
