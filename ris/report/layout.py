"""The layout shared by the Markdown, LaTeX and HTML writers: a long table (:mod:`ris.report.build`) arranged
into labelled rows, column blocks and footnotes, and each number formatted as printed.

* row labels: the fields that tell the rows apart (Method, Backbone, N), unless ``row_labels`` is given;
* columns: one per metric when the table has one dataset split (CoupAlign suppl. Tables 1-3); one per
  dataset split, in one block per metric, when it has several (the main comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ris.report.build import BASELINE, CITED, DIFFERENCE, MISSING, NUMBERS_LABEL, PAIRED, PUBLISHED, REPRODUCED
from ris.report.published import dataset_display, method_display
from ris.report.spec import LABEL_FIELDS, baseline_run, label, label_fields, spec_datasets

BASELINE_DISPLAY = {
    "all_foreground": "all foreground",
    "random_object": "a random object",
    "largest_object": "the largest object",
}
NOT_PRINTED = "-"  # a number the paper does not print (or a difference that cannot be taken)


@dataclass
class Row:
    """One printed row: its labels (blank below the first row of a group), numbers kind and cells by column."""

    labels: list[str]
    numbers: str
    cells: dict[tuple[str, str, str], dict[str, Any]]
    first_of_group: bool


@dataclass
class Layout:
    """A table as printed: label headers, column blocks, rows and footnotes."""

    label_headers: list[str]
    datasets: list[tuple[str, list[str]]]  # (dataset, splits) in column order
    metrics: list[str]
    per_metric_blocks: bool  # several dataset splits: one block (sub-table) per metric
    rows: list[Row] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)

    def block_columns(self) -> list[tuple[str | None, list[tuple[str, str, str]]]]:
        """(block title, columns) pairs."""
        splits = [(d, s) for d, ss in self.datasets for s in ss]
        if self.per_metric_blocks:
            return [(m, [(d, s, m) for d, s in splits]) for m in self.metrics]
        return [(None, [(d, s, m) for d, s in splits for m in self.metrics])]

    def block_rows(self, cols: list[tuple[str, str, str]]) -> list[Row]:
        """Rows of a block: published/difference/cited rows with no number in the block are left out."""
        return [
            r
            for r in self.rows
            if r.numbers in (NUMBERS_LABEL[REPRODUCED], NUMBERS_LABEL[BASELINE])
            or any(not _nan(r.cells.get(c, {}).get("value")) for c in cols)
        ]

    def column_header(self, col: tuple[str, str, str]) -> str:
        d, s, m = col
        return f"{dataset_display(d)} {s}" if self.per_metric_blocks else m


def layout(df: pd.DataFrame, spec: dict[str, Any]) -> Layout:
    """Arrange the long table into rows (with labels and numbers kind) and column blocks."""
    fields = label_fields(spec)
    splits = [(d, s) for d, ss in spec_datasets(spec) for s in ss]
    lay = Layout(
        label_headers=[LABEL_FIELDS[f] for f in fields],
        datasets=spec_datasets(spec),
        metrics=list(spec["metrics"]),
        per_metric_blocks=len(splits) > 1 and len(spec["metrics"]) > 1,
    )
    entries = (
        [(r, CITED) for r in spec["cited"]]
        + [(r, REPRODUCED) for r in spec["runs"]]
        + [(baseline_run(b), BASELINE) for b in spec.get("baselines", [])]
    )
    no_published = []
    for i, (r, entry) in enumerate(entries):
        sub = df[df["row"] == i]
        if entry == BASELINE:  # its name in the first label column, the others empty
            labels = [BASELINE_DISPLAY.get(r["method"], r["method"])] + [""] * (len(fields) - 1)
        else:
            labels = [label(f, r[f]) for f in fields]
        if entry == REPRODUCED:
            kinds = [REPRODUCED] + ([PUBLISHED, DIFFERENCE] if (sub["numbers"] == PUBLISHED).any() else [])
            if len(kinds) == 1:
                no_published.append(method_display(r["method"]))
        else:
            kinds = [entry]
        for j, kind in enumerate(kinds):
            cells = {(x["dataset"], x["split"], x["metric"]): x for x in sub[sub["numbers"] == kind].to_dict("records")}
            lay.rows.append(Row(labels if j == 0 else [""] * len(labels), NUMBERS_LABEL[kind], cells, j == 0))
    sources: dict[str, list[str]] = {}
    for x in df[df["numbers"].isin([PUBLISHED, CITED])].drop_duplicates(["method", "source"]).itertuples():
        sources.setdefault(str(x.source), [])
        if x.method not in sources[x.source]:
            sources[x.source].append(x.method)
    for src, methods in sources.items():
        lay.footnotes.append(f"Published numbers of {', '.join(methods)}: {src}.")
    if no_published:
        names = ", ".join(dict.fromkeys(no_published))
        lay.footnotes.append(f"No published numbers on file for {names} in this table (reproduced only).")
    if spec["cited"]:
        lay.footnotes.append("published (cited): a method we do not train; its published numbers only.")
    if spec.get("baselines"):
        lay.footnotes.append(
            "baseline: a sentence-blind guess scored on the same split (ris/evaluation/baselines.py): all "
            "foreground; a random object of the image (seeded); the image's largest object. A method above them "
            "uses the sentence."
        )
    if "RefAcc" in spec["metrics"]:
        lay.footnotes.append(
            "RefAcc: referring accuracy, the share of samples (of images with two or more refs) whose prediction "
            "overlaps the named object's mask more than any other ref's mask (IoU)."
        )
    if any(r.numbers == NUMBERS_LABEL[DIFFERENCE] for r in lay.rows):
        lay.footnotes.append("Δ: reproduced minus published.")
    if len(spec["seeds"]) > 1:
        lay.footnotes.append(
            f"Reproduced: mean ± std over {len(spec['seeds'])} seeds [95% confidence interval of the mean, Student t]."
        )
    lay.footnotes += comparison_lines(df)  # last: under everything else
    return lay


def format_cell(cell: dict[str, Any] | None, kind: str, pm: str = "±") -> str:
    """One number as printed: mean (± std), signed difference, ``missing`` or ``-``."""
    if kind == NUMBERS_LABEL[BASELINE] and (cell is None or cell["status"] == MISSING):
        return MISSING
    if kind == NUMBERS_LABEL[REPRODUCED]:
        if cell is None or cell["status"] == MISSING or _nan(cell.get("value")):
            return MISSING
        text = f"{cell['value']:.2f}"
        if cell["seeds_expected"] > 1 and cell["seeds"] > 1:
            text += f" {pm} {cell['std']:.2f} [{cell['ci95_low']:.2f}, {cell['ci95_high']:.2f}]"
        if cell["seeds"] < cell["seeds_expected"]:
            text += f" ({cell['seeds']}/{cell['seeds_expected']} seeds)"
        return text
    if cell is None or _nan(cell.get("value")):
        return NOT_PRINTED
    if kind == NUMBERS_LABEL[DIFFERENCE]:
        return f"{cell['value']:+.2f}"
    return f"{cell['value']:.2f}"


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def comparison_lines(df: pd.DataFrame) -> list[str]:
    """One line per (comparison, dataset split) of the ``PAIRED`` rows, as printed under a table."""
    paired = df[df["numbers"] == PAIRED]
    if paired.empty:
        return []
    lines = [
        "Paired bootstrap over samples: Δ = first run - second run on the same samples, each the mean over its "
        "seeds; [95% percentile CI]; p: two-sided p-value of Δ = 0 (test-set sampling only; ris/report/stats.py)."
    ]
    for (_, d, s), g in paired.groupby(["row", "dataset", "split"], sort=False):
        computed = g[g["status"] != MISSING]
        if computed.empty:
            lines.append(f"{g['source'].iloc[0]} ({dataset_display(str(d))} {s}): {MISSING} (a run is not evaluated).")
            continue
        head = f"{computed['source'].iloc[0]} ({dataset_display(str(d))} {s})"
        parts = [
            f"{x.metric} Δ {NOT_PRINTED} ({'not in samples.csv' if x.status == MISSING else 'no eligible sample'})"
            if _nan(x.value)
            else f"{x.metric} Δ = {x.value:+.2f} [{x.ci95_low:+.2f}, {x.ci95_high:+.2f}], "
            + (f"p = {x.p_value:.3f}" if x.p_value >= 0.001 else "p < 0.001")
            for x in g.itertuples()
        ]
        lines.append(f"{head}: {'; '.join(parts)}.")
    return lines
