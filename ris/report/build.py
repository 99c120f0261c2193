"""A table's numbers as one long DataFrame: reproduced (mean over seeds, from ``metrics.json``), published
(the papers', beside ours), their difference, the trivial baselines, and paired bootstrap comparisons.

Rows come in table order: cited methods first (in config order), then the trained runs (in config order),
as papers list prior work before their own; a trained run has a ``reproduced`` row, and when the paper
printed numbers for it, a ``published`` row and a ``difference`` row (reproduced - published). Reproduced
numbers are the mean over seeds with their std and a Student-t 95% interval; a run without a metrics.json
is ``missing``; nothing becomes zero. A spec's ``comparisons`` (the ``stats:`` section,
:func:`ris.report.spec.stats_spec`) add a paired bootstrap over samples of the difference between two trained
runs on each split (:mod:`ris.report.stats`), as ``paired bootstrap`` rows. :mod:`ris.report.render` lays the frame out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ris.evaluation.baselines import BASELINE_BACKBONE
from ris.report.published import load_published, method_display, published_for
from ris.report.spec import baseline_run, row_name, spec_datasets
from ris.report.stats import REFERS, SAMPLE_COLUMNS, paired_bootstrap, read_samples, seed_interval

REPRODUCED, PUBLISHED, DIFFERENCE, CITED = "reproduced", "published", "difference", "published (cited)"
BASELINE = "baseline"  # a trivial baseline scored by the pipeline on the same split (ris/evaluation/baselines.py)
PAIRED = "paired bootstrap"  # CSV rows of a comparison: Δ = a - b with its bootstrap CI and p-value
NUMBERS_LABEL = {
    REPRODUCED: "reproduced",
    PUBLISHED: "published",
    DIFFERENCE: "Δ",
    CITED: "published (cited)",
    BASELINE: "baseline",
}
MISSING = "missing"  # a reproduced number whose run has no metrics.json

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


def load_reproduced(metric_files: Sequence[Path]) -> pd.DataFrame | None:
    """The reproduced numbers of the ``metric_files`` that exist (None when none does): missing runs show as such."""
    from ris.evaluation.results import load_metrics

    existing = [Path(p) for p in metric_files if Path(p).exists()]
    return load_metrics(existing) if existing else None


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


def _run_name(run: dict[str, Any]) -> str:
    return f"{run['method']}-{run['backbone']}-n{run['num_masks']}"


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
                    tables = [[read_samples(f[x], SAMPLE_COLUMNS, (REFERS,)) for x in sorted(f)] for f in files]
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


def check_cited(spec: dict[str, Any], published: pd.DataFrame) -> None:
    """Every cited method of the table must have published numbers (else it is a typo in config.yaml)."""
    for r in spec["cited"]:
        if published_for(published, spec["published_from"], r["method"], r["backbone"], r["num_masks"]).empty:
            have = sorted(set(published.loc[published["table"] == spec["published_from"], "method"]))
            raise ValueError(
                f"table {spec['name']!r}: cited method {r['method']!r} (backbone {r['backbone']}, N={r['num_masks']}) "
                f"has no published numbers under table {spec['published_from']!r}; methods there: {', '.join(have)}"
            )
