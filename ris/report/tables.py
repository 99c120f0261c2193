"""The papers' tables from ``metrics.json`` files, with the published numbers beside ours.

A table is declared in ``config.yaml`` (``tables:``): which runs we train, which cited methods to show
(published numbers only), which dataset splits and metrics are its columns, its caption.
:func:`table_spec` resolves one declaration into a plain JSON-able dict (what ``ris tables`` receives);
:func:`build_table` joins it with the reproduced metrics and the published facts into one long
DataFrame (the CSV), and :func:`to_markdown`, :func:`to_latex` and :func:`to_html` lay that out as the
papers print it:

* rows: cited methods first (in config order), then the trained runs (in config order), as papers list
  prior work before their own; a trained run has a ``reproduced`` row, and when the paper printed
  numbers for it, a ``published`` row and a ``Δ`` row (reproduced - published) below it;
* row labels: the fields that tell the rows apart (Method, Backbone, N), unless ``row_labels`` is given;
* columns: one per metric when the table has one dataset split (CoupAlign suppl. Tables 1-3); one per
  dataset split, in one block per metric, when it has several (the main comparison).

Reproduced numbers are the mean over seeds (``mean ± std [95% CI]`` with several seeds, a Student-t
interval); a run without a metrics.json shows as ``missing``, a number the paper did not print as ``-``;
nothing becomes zero. A spec's ``comparisons`` (the ``stats:`` section of config.yaml, :func:`stats_spec`)
add a paired bootstrap over samples of the difference between two trained runs on each split
(:mod:`ris.report.stats`), printed under the table and as ``paired bootstrap`` rows of the CSV.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ris.evaluation.baselines import BASELINE_BACKBONE
from ris.metrics import METRIC_NAMES
from ris.report.published import (
    backbone_display,
    dataset_display,
    load_published,
    method_display,
    published_for,
)
from ris.report.stats import REFERS, SAMPLE_COLUMNS, paired_bootstrap, seed_interval
from ris.utils import atomic_path

REPRODUCED, PUBLISHED, DIFFERENCE, CITED = "reproduced", "published", "difference", "published (cited)"
BASELINE = "baseline"  # a trivial baseline scored by the pipeline on the same split (ris/evaluation/baselines.py)
BASELINE_DISPLAY = {
    "all_foreground": "all foreground",
    "random_object": "a random object",
    "largest_object": "the largest object",
}
PAIRED = "paired bootstrap"  # CSV rows of a comparison: Δ = a - b with its bootstrap CI and p-value
NUMBERS_LABEL = {
    REPRODUCED: "reproduced",
    PUBLISHED: "published",
    DIFFERENCE: "Δ",
    CITED: "published (cited)",
    BASELINE: "baseline",
}
LABEL_FIELDS = {"method": "Method", "backbone": "Backbone", "num_masks": "N"}
MISSING = "missing"  # a reproduced number whose run has no metrics.json
NOT_PRINTED = "-"  # a number the paper does not print (or a difference that cannot be taken)

LONG_COLUMNS = [
    "table",
    "row",
    "method",
    "method_key",
    "backbone",
    "num_masks",
    "numbers",
    "dataset",
    "dataset_used",
    "split",
    "metric",
    "value",
    "std",
    "ci95_low",  # reproduced: Student-t 95% CI of the mean over seeds; paired bootstrap: percentile CI of Δ
    "ci95_high",
    "seeds",
    "seeds_expected",
    "status",
    "source",
    "versus",  # paired bootstrap rows: the run subtracted (b of Δ = a - b)
    "p_value",  # paired bootstrap rows: two-sided p-value of Δ = 0
]


# --------------------------------------------------------------------------------------------------
# Declaration -> resolved spec


def demo_note(config: dict, datasets: Iterable[str]) -> str:
    """The caption sentences saying the numbers are on synthetic data (empty on real data)."""
    from ris.config import dataset_for

    used = {d: dataset_for(config, d) for d in datasets}
    synthetic = sorted({u for u in used.values() if config["datasets"].get(u, {}).get("source") == "synthetic"})
    if not synthetic:
        return ""
    aliased = [dataset_display(d) for d, u in used.items() if u != d]
    text = (
        f"Demo scale: reproduced numbers come from tiny models trained for a few epochs on the synthetic "
        f"dataset the pipeline generates ({', '.join(synthetic)}), not on real images."
    )
    if len(aliased) > 1:
        text += f" All dataset columns ({', '.join(aliased)}) are the same synthetic set, so they repeat."
    elif aliased:
        text += f" The {aliased[0]} column is the synthetic set."
    return text + " Published numbers, where shown, are the papers' (real data, full-size models)."


def table_spec(config: dict, name: str) -> dict[str, Any]:
    """Resolve the declaration of table ``name`` in ``config`` into what ``ris tables`` needs."""
    from ris.config import dataset_for

    t = config["tables"][name]
    caption = t.get("caption", name)
    note = demo_note(config, t["datasets"])
    p = config["scales"][config["scale"]]
    metrics = list(t.get("metrics") or METRIC_NAMES)
    metrics += [m for m in p.get("extra_metrics", []) if m not in metrics]
    return {
        "name": name,
        "caption": caption,
        "note": note,
        "scale": config["scale"],
        "metrics": metrics,
        # a list of [dataset, splits] pairs, not a mapping: column order must survive JSON with sorted keys
        "datasets": [[d, list(s)] for d, s in t["datasets"].items()],
        "dataset_used": {d: dataset_for(config, d) for d in t["datasets"]},
        "runs": [
            {"method": r["method"], "backbone": r["backbone"], "num_masks": int(r.get("num_masks", 0))}
            for r in t["runs"]
        ],
        "cited": [
            {"method": r["method"], "backbone": r["backbone"], "num_masks": int(r.get("num_masks", 0))}
            for r in t.get("published", [])
        ],
        "baselines": list(p.get("baselines", [])),  # ris/evaluation/baselines.py names, rows after the runs
        "published_from": t.get("published_from", name),
        "row_labels": list(t.get("row_labels") or []),
        "seeds": [int(s) for s in config["seeds"]],
    }


def stats_spec(config: dict) -> dict[str, Any]:
    """Spec of the ``stats:`` section's table: that table with the section's seeds, comparisons, bootstrap.

    ``config`` has passed :func:`ris.config.validate` (so the table and the compared runs exist).
    """
    from ris.config import stats_config

    st = config["stats"]
    spec = table_spec(stats_config(config), st["table"])
    spec["comparisons"] = [
        {side: {**pair[side], "num_masks": int(pair[side].get("num_masks", 0))} for side in ("a", "b")}
        for pair in st.get("comparisons", [])
    ]
    bootstrap = st.get("bootstrap") or {}
    spec["bootstrap"] = {"resamples": int(bootstrap.get("resamples", 10_000)), "seed": int(bootstrap.get("seed", 0))}
    return spec


def spec_datasets(spec: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(dataset, splits) of a table's columns, in order (``datasets`` as pairs, or a mapping)."""
    ds = spec["datasets"]
    items = ds.items() if isinstance(ds, dict) else ds
    return [(str(d), list(splits)) for d, splits in items]


def full_caption(spec: dict[str, Any]) -> str:
    """Caption with the demo-scale note appended (when there is one)."""
    return " ".join(x for x in (spec["caption"], spec.get("note", "")) if x)


# --------------------------------------------------------------------------------------------------
# Data: reproduced + published -> one long DataFrame


def _columns(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dataset, split, metric) of every number column, in table order."""
    return [(d, s, m) for d, splits in spec_datasets(spec) for s in splits for m in spec["metrics"]]


def _aggregate(reproduced: pd.DataFrame) -> dict[tuple, tuple[float, float, int, float, float]]:
    """(dataset, method, backbone, num_masks, split, metric) -> (mean, std, seeds, ci95_low, ci95_high).

    std is 0 and the CI NaN with one seed.
    """
    if reproduced is None or reproduced.empty:
        return {}
    df = reproduced.drop_duplicates(["dataset", "method", "backbone", "num_masks", "split", "metric", "seed"])
    g = df.groupby(["dataset", "method", "backbone", "num_masks", "split", "metric"], sort=False)["value"]
    out = {}
    for (d, m, b, n, s, k), values in g:
        iv = seed_interval(values.to_numpy())
        out[(d, m, b, int(n), s, k)] = (iv.mean, iv.std if iv.n > 1 else 0.0, iv.n, iv.ci_low, iv.ci_high)
    return out


def build_table(
    spec: dict[str, Any], reproduced: pd.DataFrame | None, published: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The table as one long DataFrame (columns ``LONG_COLUMNS``), rows and columns in table order.

    ``reproduced``: :func:`ris.evaluation.results.load_metrics` output (one row per run x split x metric x
    seed). ``published``: :func:`ris.report.published.load_published` output (default: the project's file).
    Every reproduced cell is present (``status`` ``missing`` without a value when its run is absent);
    published and difference cells only where the paper printed the number.
    """
    published = load_published() if published is None else published
    agg = _aggregate(reproduced)
    cols = _columns(spec)
    n_seeds = len(spec["seeds"])
    records: list[dict[str, Any]] = []
    table = spec["name"]
    row = 0

    def base(r: dict, numbers: str, d: str, s: str, m: str) -> dict[str, Any]:
        return {
            "table": table,
            "row": row,
            "method": method_display(r["method"]),
            "method_key": r["method"],
            "backbone": r["backbone"],
            "num_masks": r["num_masks"],
            "numbers": numbers,
            "dataset": d,
            "dataset_used": spec["dataset_used"].get(d, d),
            "split": s,
            "metric": m,
        }

    def facts(r: dict) -> dict[tuple[str, str, str], tuple[float, str]]:
        sel = published_for(published, spec["published_from"], r["method"], r["backbone"], r["num_masks"])
        return {(x.dataset, x.split, x.metric): (float(x.value), str(x.source)) for x in sel.itertuples()}

    for r in spec["cited"]:
        f = facts(r)
        for d, s, m in cols:
            if (d, s, m) in f:
                v, src = f[(d, s, m)]
                records.append(base(r, CITED, d, s, m) | {"value": v, "status": "published", "source": src})
        row += 1

    for r in spec["runs"]:
        f = facts(r)
        for d, s, m in cols:
            key = (spec["dataset_used"].get(d, d), r["method"], r["backbone"], r["num_masks"], s, m)
            rec = base(r, REPRODUCED, d, s, m) | {"seeds_expected": n_seeds}
            if key in agg:
                mean, std, count, low, high = agg[key]
                rec |= {"value": mean, "std": std, "ci95_low": low, "ci95_high": high, "seeds": count}
                rec["status"] = "ok" if count >= n_seeds else "partial"
            else:
                rec |= {"seeds": 0, "status": MISSING}
            records.append(rec)
        for d, s, m in cols:
            if (d, s, m) in f:
                v, src = f[(d, s, m)]
                records.append(base(r, PUBLISHED, d, s, m) | {"value": v, "status": "published", "source": src})
        for d, s, m in cols:
            key = (spec["dataset_used"].get(d, d), r["method"], r["backbone"], r["num_masks"], s, m)
            if (d, s, m) in f and key in agg:
                v, src = f[(d, s, m)]
                records.append(base(r, DIFFERENCE, d, s, m) | {"value": agg[key][0] - v, "status": "ok", "source": src})
        row += 1

    for name in spec.get("baselines", []):
        r = baseline_run(name)
        for d, s, m in cols:
            key = (spec["dataset_used"].get(d, d), name, BASELINE_BACKBONE, 0, s, m)
            rec = base(r, BASELINE, d, s, m) | {"source": "ris/evaluation/baselines.py, on the same split"}
            if key in agg:
                rec |= {"value": agg[key][0], "seeds": 1, "status": "ok"}
            else:
                rec |= {"seeds": 0, "status": MISSING}
            records.append(rec)
        row += 1

    df = pd.DataFrame.from_records(records, columns=LONG_COLUMNS)
    df["seeds"] = df["seeds"].astype("Int64")
    df["seeds_expected"] = df["seeds_expected"].astype("Int64")
    return df


def baseline_run(name: str) -> dict[str, Any]:
    """A baseline as a table row entry (``method`` is its name; see :mod:`ris.evaluation.baselines`)."""
    return {"method": name, "backbone": BASELINE_BACKBONE, "num_masks": 0}


def _run_name(run: dict[str, Any]) -> str:
    return f"{run['method']}-{run['backbone']}-n{run['num_masks']}"


def _read_samples(path: Path) -> pd.DataFrame:
    """The columns of a ``samples.csv`` that the paired bootstrap reads (not the RLE masks)."""
    df = pd.read_csv(path, usecols=lambda c: c in (*SAMPLE_COLUMNS, REFERS))
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a samples.csv of `ris evaluate` (no column {', '.join(missing)})")
    return df


def build_comparisons(spec: dict[str, Any], metric_files: list[Path]) -> pd.DataFrame:
    """``PAIRED`` rows (columns ``LONG_COLUMNS``): Δ = a - b of each of ``spec["comparisons"]``, per split and metric.

    Per-sample counts come from the ``samples.csv`` beside each ``metrics.json`` of ``metric_files`` (every
    seed of a run is used); a comparison whose runs are not both evaluated is a ``missing`` row.
    """
    from ris.utils import read_json

    by_run: dict[tuple, dict[int, Path]] = {}  # (dataset, method, backbone, N, split) -> seed -> samples.csv
    for path in map(Path, metric_files):
        if not path.exists():
            continue
        r = read_json(path)
        csv = path.with_name("samples.csv")
        if not csv.exists():
            raise FileNotFoundError(f"{csv}: missing beside {path.name} (the paired bootstrap needs per-sample IoUs)")
        by_run.setdefault((r["dataset"], r["method"], r["backbone"], int(r["num_masks"]), r["split"]), {})[
            int(r["seed"])
        ] = csv
    boot = spec.get("bootstrap") or {}
    resamples, seed = int(boot.get("resamples", 10_000)), int(boot.get("seed", 0))
    first_row = len(spec["cited"]) + len(spec["runs"]) + len(spec.get("baselines", []))  # after every laid-out row
    records: list[dict[str, Any]] = []
    cache: dict[tuple, list] = {}
    for k, pair in enumerate(spec.get("comparisons", [])):
        a, b = pair["a"], pair["b"]
        what = f"paired bootstrap: {row_name(spec, a)} - {row_name(spec, b)}"
        for d, splits in spec_datasets(spec):
            used = spec["dataset_used"].get(d, d)
            for s in splits:
                files = [by_run.get((used, r["method"], r["backbone"], r["num_masks"], s), {}) for r in (a, b)]
                base = {
                    "table": spec["name"], "row": first_row + k, "method": method_display(a["method"]),
                    "method_key": a["method"], "backbone": a["backbone"], "num_masks": a["num_masks"],
                    "numbers": PAIRED, "dataset": d, "dataset_used": used, "split": s,
                    "seeds_expected": len(spec["seeds"]), "versus": _run_name(b),
                }  # fmt: skip
                if not all(files):
                    records += [
                        base | {"metric": m, "seeds": 0, "status": MISSING, "source": what} for m in spec["metrics"]
                    ]
                    continue
                key = (used, s, _run_name(a), _run_name(b))
                if key not in cache:
                    tables = [[_read_samples(f[x]) for x in sorted(f)] for f in files]
                    refers = all(REFERS in t.columns for side in tables for t in side)  # older samples.csv: no RefAcc
                    metrics = [m for m in spec["metrics"] if m != "RefAcc" or refers]
                    results = paired_bootstrap(*tables, metrics=metrics, resamples=resamples, seed=seed)
                    cache[key] = {res.metric: res for res in results}
                for m in spec["metrics"]:
                    res = cache[key].get(m)
                    if res is None:
                        records.append(
                            base | {"metric": m, "seeds": 0, "status": MISSING, "source": f"{what} ({m}: no data)"}
                        )
                        continue
                    complete = min(res.seeds_a, res.seeds_b) >= len(spec["seeds"])
                    records.append(
                        base | {
                            "metric": m, "value": res.delta, "ci95_low": res.ci_low, "ci95_high": res.ci_high,
                            "p_value": res.p_value, "seeds": min(res.seeds_a, res.seeds_b),
                            "status": "ok" if complete else "partial",
                            "source": f"{what}, {res.samples} samples, seeds {res.seeds_a} vs {res.seeds_b}, "
                            f"{res.resamples} resamples",
                        }
                    )  # fmt: skip
    df = pd.DataFrame.from_records(records, columns=LONG_COLUMNS)
    df["seeds"] = df["seeds"].astype("Int64")
    df["seeds_expected"] = df["seeds_expected"].astype("Int64")
    return df


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


def check_cited(spec: dict[str, Any], published: pd.DataFrame) -> None:
    """Every cited method of the table must have published numbers (else it is a typo in config.yaml)."""
    for r in spec["cited"]:
        if published_for(published, spec["published_from"], r["method"], r["backbone"], r["num_masks"]).empty:
            have = sorted(set(published.loc[published["table"] == spec["published_from"], "method"]))
            raise ValueError(
                f"table {spec['name']!r}: cited method {r['method']!r} (backbone {r['backbone']}, N={r['num_masks']}) "
                f"has no published numbers under table {spec['published_from']!r}; methods there: {', '.join(have)}"
            )


def row_name(spec: dict[str, Any], run: dict[str, Any]) -> str:
    """Short name of a table row for legends: its label fields (``LAVT / Swin-B``, ``N=100``)."""
    parts = []
    for f in _label_fields(spec):
        parts.append(f"N={run[f]}" if f == "num_masks" else _label(f, run[f]))
    return " / ".join(parts)


# --------------------------------------------------------------------------------------------------
# Layout shared by the Markdown, LaTeX and HTML writers


@dataclass
class Row:
    labels: list[str]
    numbers: str
    cells: dict[tuple[str, str, str], dict[str, Any]]
    first_of_group: bool


@dataclass
class Layout:
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


def _label_fields(spec: dict[str, Any]) -> list[str]:
    """Fields that tell rows apart: Method if several methods, Backbone if several, N if one method has several."""
    if spec.get("row_labels"):
        return list(spec["row_labels"])
    rows = spec["cited"] + spec["runs"]
    fields = []
    if len({r["method"].lower() for r in rows}) > 1:
        fields.append("method")
    if len({r["backbone"] for r in rows}) > 1:
        fields.append("backbone")
    by_method: dict[str, set[int]] = {}
    for r in rows:
        by_method.setdefault(r["method"].lower(), set()).add(r["num_masks"])
    if any(len(v) > 1 for v in by_method.values()):
        fields.append("num_masks")
    return fields or ["method"]


def _label(field_name: str, value: Any) -> str:
    if field_name == "method":
        return method_display(str(value))
    if field_name == "backbone":
        return backbone_display(str(value))
    return str(value)


def layout(df: pd.DataFrame, spec: dict[str, Any]) -> Layout:
    """Arrange the long table into rows (with labels and numbers kind) and column blocks."""
    fields = _label_fields(spec)
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
            labels = [_label(f, r[f]) for f in fields]
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


# --------------------------------------------------------------------------------------------------
# Writers


def to_markdown(df: pd.DataFrame, spec: dict[str, Any]) -> str:
    """GitHub Markdown: caption, one pipe table per block, footnotes."""
    lay = layout(df, spec)
    lines = [f"**Table `{spec['name']}`.** {full_caption(spec)}", ""]
    for title, cols in lay.block_columns():
        if title:
            lines += [f"*{title}*", ""]
        header = [*lay.label_headers, "Numbers", *(lay.column_header(c) for c in cols)]
        align = [":---"] * len(lay.label_headers) + [":---"] + ["---:"] * len(cols)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(align) + "|")
        for r in lay.block_rows(cols):
            cells = [format_cell(r.cells.get(c), r.numbers) for c in cols]
            lines.append("| " + " | ".join([*r.labels, r.numbers, *cells]) + " |")
        lines.append("")
    lines += [f"- {f}" for f in lay.footnotes]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters; Δ and ± become math."""
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("Δ", r"$\Delta$").replace("±", r"$\pm$")


def to_latex(df: pd.DataFrame, spec: dict[str, Any]) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``), ready to paste into a paper."""
    lay = layout(df, spec)
    blocks = lay.block_columns()
    ncols = len(blocks[0][1])
    nlab = len(lay.label_headers) + 1
    out = [
        f"% Table {spec['name']}: generated by `ris tables` from metrics.json files; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]",
        r"  \centering",
        r"  \small",
        f"  \\caption{{{latex_escape(full_caption(spec))}}}",
        f"  \\label{{tab:{spec['name']}}}",
        "  \\begin{tabular}{" + "l" * nlab + "r" * ncols + "}",
        r"    \toprule",
    ]
    if lay.per_metric_blocks:
        groups, rules, start = [], [], nlab + 1
        for d, splits in lay.datasets:
            groups.append(
                f"\\multicolumn{{{len(splits)}}}{{c}}{{{latex_escape(dataset_display(d))}}}"
                if len(splits) > 1
                else latex_escape(dataset_display(d))
            )
            rules.append(f"\\cmidrule(lr){{{start}-{start + len(splits) - 1}}}")
            start += len(splits)
        out.append("    " + " & ".join([""] * nlab + groups) + r" \\")
        out.append("    " + " ".join(rules))
        heads = [latex_escape(s) for _, splits in lay.datasets for s in splits]
    else:
        heads = [latex_escape(c[2]) for c in blocks[0][1]]
    out.append("    " + " & ".join([latex_escape(h) for h in lay.label_headers] + [""] + heads) + r" \\")
    for title, cols in blocks:
        out.append(r"    \midrule")
        if title:
            out.append(f"    \\multicolumn{{{nlab + ncols}}}{{l}}{{\\textit{{{latex_escape(title)}}}}} \\\\")
            out.append(r"    \midrule")
        rows = lay.block_rows(cols)
        for i, r in enumerate(rows):
            if r.first_of_group and i > 0 and any(x.numbers != NUMBERS_LABEL[CITED] for x in rows[i - 1 : i + 1]):
                out.append(r"    \addlinespace")
            cells = [latex_escape(format_cell(r.cells.get(c), r.numbers, pm="±")) for c in cols]
            out.append(
                "    " + " & ".join([latex_escape(x) for x in r.labels] + [latex_escape(r.numbers)] + cells) + r" \\"
            )
    out.append(r"    \bottomrule")
    out.append(r"  \end{tabular}")
    if lay.footnotes:
        out.append(r"  \par\smallskip")
        out.append("  {\\footnotesize " + r" \\ ".join(latex_escape(f) for f in lay.footnotes) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_html(df: pd.DataFrame, spec: dict[str, Any]) -> str:
    """A standalone HTML page of the table (two header rows, like the LaTeX), for the Snakemake report."""
    lay = layout(df, spec)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{e(spec['name'])}</title>",
        "<style>body{font-family:sans-serif;font-size:13px;margin:12px}"
        "table{border-collapse:collapse;margin:8px 0 16px}"
        "th,td{padding:3px 8px;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}"
        "thead tr:first-child th{border-top:2px solid #000}thead tr:last-child th{border-bottom:1px solid #000}"
        "tbody tr:last-child td{border-bottom:2px solid #000}tr.group td{border-top:1px solid #ccc}"
        "td.missing{color:#b00}tr.cited td,tr.published td{color:#444}tr.difference td{color:#666;font-style:italic}"
        "caption{caption-side:top;text-align:left;max-width:60em;white-space:normal;margin-bottom:6px}</style>",
        "</head><body>",
    ]
    for title, cols in lay.block_columns():
        parts.append(f'<table class="ris-table" id="{e(spec["name"])}{"-" + e(title) if title else ""}">')
        cap = f"<b>Table {e(spec['name'])}.</b> {e(full_caption(spec))}"
        parts.append(f"<caption>{cap}{' <i>(' + e(title) + ')</i>' if title else ''}</caption><thead>")
        nlab = len(lay.label_headers) + 1
        if lay.per_metric_blocks:
            parts.append("<tr>" + "<th></th>" * nlab)
            for d, splits in lay.datasets:
                parts.append(f'<th colspan="{len(splits)}">{e(dataset_display(d))}</th>')
            parts.append("</tr>")
            heads = [s for _, splits in lay.datasets for s in splits]
        else:
            heads = [c[2] for c in cols]
        parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in [*lay.label_headers, "Numbers", *heads]) + "</tr>")
        parts.append("</thead><tbody>")
        for r in lay.block_rows(cols):
            kind = {v: k for k, v in NUMBERS_LABEL.items()}[r.numbers]
            css = ("cited" if kind == CITED else kind) + (" group" if r.first_of_group else "")
            cells = []
            for c in cols:
                text = format_cell(r.cells.get(c), r.numbers)
                cells.append(f'<td class="n{" missing" if text == MISSING else ""}">{e(text)}</td>')
            labels = "".join(f"<td>{e(x)}</td>" for x in r.labels)
            parts.append(f'<tr class="{css}">{labels}<td>{e(r.numbers)}</td>{"".join(cells)}</tr>')
        parts.append("</tbody></table>")
    if lay.footnotes:
        parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in lay.footnotes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------
# Entry point of `ris tables`


def write_tables(
    spec: dict[str, Any],
    metric_files: list[Path],
    out_dir: Path | None = None,
    outputs: dict[str, Path] | None = None,
    published: Path | None = None,
) -> pd.DataFrame:
    """Write ``<name>.{csv,md,tex,html}`` into ``out_dir`` (or the paths in ``outputs``, by suffix).

    ``metric_files`` that do not exist are skipped (their runs show as missing); files of runs the
    table does not declare are ignored.
    """
    from ris.evaluation.results import load_metrics

    existing = [Path(p) for p in metric_files if Path(p).exists()]
    reproduced = load_metrics(existing) if existing else None
    facts = load_published(published)
    check_cited(spec, facts)
    df = build_table(spec, reproduced, facts)
    if spec.get("comparisons"):
        df = pd.concat([df, build_comparisons(spec, existing)], ignore_index=True)
    if outputs is None:
        if out_dir is None:
            raise ValueError("give out_dir or outputs")
        outputs = {ext: Path(out_dir) / f"{spec['name']}.{ext}" for ext in ("csv", "md", "tex", "html")}
    writers = {
        "csv": lambda p: df.to_csv(p, index=False, float_format="%.4f"),
        "md": lambda p: p.write_text(to_markdown(df, spec)),
        "tex": lambda p: p.write_text(to_latex(df, spec)),
        "html": lambda p: p.write_text(to_html(df, spec)),
    }
    for ext, path in outputs.items():
        if ext not in writers:
            raise ValueError(f"unknown table format {ext!r}; expected one of {', '.join(writers)}")
        with atomic_path(Path(path)) as tmp:
            writers[ext](tmp)
    return df


def expected_metric_files(config: dict, name: str) -> list[Path]:
    """Where the metrics.json files of table ``name`` are written by the pipeline."""
    from ris.config import table_evaluations

    results = Path(config["results_dir"])
    return [results / "eval" / k.path / s / "metrics.json" for k, s in table_evaluations(config, name)]
