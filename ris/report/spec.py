"""What a table is: the declaration in ``config.yaml`` (``tables:``) resolved into a plain JSON-able spec,
its caption, its rows' names and the figures drawn from it.

A table declares which runs we train, which cited methods to show (published numbers only), which dataset
splits and metrics are its columns, and its caption. :func:`table_spec` resolves one declaration into what
``ris tables`` and ``ris plot`` receive; :func:`stats_spec` does the same for the ``stats:`` section.

Light on purpose (no pandas, no matplotlib): the Snakefile imports this module to plan the DAG.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ris.evaluation.baselines import BASELINE_BACKBONE
from ris.metrics import METRIC_NAMES
from ris.report.published import backbone_display, dataset_display, method_display

LABEL_FIELDS = {"method": "Method", "backbone": "Backbone", "num_masks": "N"}


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
    from ris.config import dataset_for, dropped_num_masks, scale_table_runs
    from ris.rehearsal import rehearsal_note, rehearsing

    t = config["tables"][name]
    caption = t.get("caption", name)
    note = " ".join(x for x in (rehearsal_note(config), demo_note(config, t["datasets"])) if x)
    if dropped := dropped_num_masks(config, name):
        listed = ", ".join(str(n) for n in dropped)
        where = f"scales.{config['scale']}.num_masks"
        note = f"{note} N = {listed} not trained at this scale ({where}); the paper scale trains every N.".strip()
    p = config["scales"][config["scale"]]
    metrics = list(t.get("metrics") or METRIC_NAMES)
    metrics += [m for m in p.get("extra_metrics", []) if m not in metrics]
    return {
        "name": name,
        "caption": caption,
        "note": note,
        "scale": config["scale"],
        "rehearsal": rehearsing(config),  # the paper DAG on a slice (ris/rehearsal.py): its figures say so
        "metrics": metrics,
        # a list of [dataset, splits] pairs, not a mapping: column order must survive JSON with sorted keys
        "datasets": [[d, list(s)] for d, s in t["datasets"].items()],
        "dataset_used": {d: dataset_for(config, d) for d in t["datasets"]},
        "runs": [
            {"method": r["method"], "backbone": r["backbone"], "num_masks": int(r.get("num_masks", 0))}
            for r in scale_table_runs(config, name)
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


def label_fields(spec: dict[str, Any]) -> list[str]:
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


def label(field_name: str, value: Any) -> str:
    """A row label field's value as printed (the papers' method and backbone names)."""
    if field_name == "method":
        return method_display(str(value))
    if field_name == "backbone":
        return backbone_display(str(value))
    return str(value)


def row_name(spec: dict[str, Any], run: dict[str, Any]) -> str:
    """Short name of a table row for legends: its label fields (``LAVT / Swin-B``, ``N=100``)."""
    parts = []
    for f in label_fields(spec):
        parts.append(f"N={run[f]}" if f == "num_masks" else label(f, run[f]))
    return " / ".join(parts)


def baseline_run(name: str) -> dict[str, Any]:
    """A baseline as a table row entry (``method`` is its name; see :mod:`ris.evaluation.baselines`)."""
    return {"method": name, "backbone": BASELINE_BACKBONE, "num_masks": 0}


def table_figures(spec: dict[str, Any]) -> list[str]:
    """Figure names of a table: precision, training and qualitative grids for every table, and ``num_masks``
    when its runs span at least three values of N (CoupAlign suppl. Table 3)."""
    names = ["precision", "training", "qualitative_successes", "qualitative_failures", "qualitative_swap"]
    if len({r["num_masks"] for r in spec["runs"]}) >= 3:
        names.insert(1, "num_masks")
    return names


def expected_metric_files(config: dict, name: str) -> list[Path]:
    """Where the metrics.json files of table ``name`` are written by the pipeline."""
    from ris.config import table_evaluations

    results = Path(config["results_dir"])
    return [results / "eval" / k.path / s / "metrics.json" for k, s in table_evaluations(config, name)]


BREAKDOWN_SPLIT = "val"  # the split of the expression-type table (ris/report/breakdown.py)


def breakdown_runs(config: dict) -> list:
    """The rows of the expression-type table: every first-seed run of the declared tables trained on a
    synthetic dataset (only those have a ``specs.json``) and evaluated on ``BREAKDOWN_SPLIT``, in table order.

    Empty at paper scale (real data), so its DAG plans no such job.
    """
    from ris.config import evaluation_splits, table_runs

    seed = config["seeds"][0]
    splits = evaluation_splits(config)
    keys = dict.fromkeys(k for t in config["tables"] for k in table_runs(config, t) if k.seed == seed)
    return [
        k
        for k in keys
        if config["datasets"].get(k.dataset, {}).get("source") == "synthetic" and BREAKDOWN_SPLIT in splits[k]
    ]


def run_labels(keys: Iterable[Any]) -> list[str]:
    """Runs (:class:`ris.config.RunKey`) as row names across tables: method and backbone, and N where one
    method appears with several numbers of masks."""
    keys = list(keys)
    counts: dict[str, set[int]] = {}
    for k in keys:
        counts.setdefault(k.method, set()).add(k.num_masks)
    return [
        f"{method_display(k.method)} ({backbone_display(k.backbone)}"
        + (f", N={k.num_masks})" if len(counts[k.method]) > 1 else ")")
        for k in keys
    ]
