"""``ris runs``: the runs of an MLflow store as a table for the terminal (or CSV / JSON).

One line per MLflow run of the pipeline's experiments (``ris-<scale>-<dataset>``): its name, dataset,
method, backbone, N, seed, status, the best validation oIoU of training and the evaluated splits'
metrics (``<split> <metric>``, as logged by ``ris evaluate``). Reads the store only: a store that does
not exist is an error, never created.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SPLIT_ORDER = ["val", "testA", "testB", "test"]
BASE_COLUMNS = ["run", "dataset", "method", "backbone", "N", "seed", "status", "best val oIoU"]


def _check_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.exists():
            raise FileNotFoundError(f"{path}: no MLflow store there (run the pipeline first, or give --uri)")


def list_runs(uri: str, experiment_prefix: str = "ris-", metrics: tuple[str, ...] = ("oIoU", "mIoU")) -> pd.DataFrame:
    """A DataFrame of every run in experiments whose name starts with ``experiment_prefix``."""
    from mlflow.tracking import MlflowClient

    _check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name.startswith(experiment_prefix)]
    rows, splits = [], []
    for exp in exps:
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], max_results=500, page_token=token)
            for r in page:
                tags, m = r.data.tags, r.data.metrics
                row = {
                    # run names are "<dataset>/<method>-<backbone>-n<N>-s<seed>"; the dataset has its column
                    "run": (r.info.run_name or tags.get("mlflow.runName") or r.info.run_id[:8]).rsplit("/", 1)[-1],
                    "dataset": tags.get("dataset", ""),
                    "method": tags.get("method", ""),
                    "backbone": tags.get("backbone", ""),
                    "N": int(tags["num_masks"]) if tags.get("num_masks", "").isdigit() else None,
                    "seed": int(tags["seed"]) if tags.get("seed", "").isdigit() else None,
                    "status": r.info.status,
                    "best val oIoU": m.get("best_val_oIoU"),
                    "experiment": exp.name,
                    "tables": tags.get("tables", ""),
                    "run_id": r.info.run_id,
                }
                for key, value in m.items():
                    split, sep, name = key.partition("/")
                    name = name.replace("_at_", "@")
                    if sep and name in metrics:
                        row[f"{split} {name}"] = value
                        splits.append(split)
                rows.append(row)
            token = page.token
            if not token:
                break
    split_order = sorted(set(splits), key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))
    metric_cols = [f"{s} {m}" for s in split_order for m in metrics]
    df = pd.DataFrame(rows, columns=BASE_COLUMNS + metric_cols + ["experiment", "tables", "run_id"])
    if df.empty:
        return df
    df = df.sort_values(["dataset", "method", "backbone", "N", "seed", "run"], kind="mergesort")
    df["N"] = df["N"].astype("Int64")
    df["seed"] = df["seed"].astype("Int64")
    return df.reset_index(drop=True)


def format_runs(df: pd.DataFrame, fmt: str = "table", wide: bool = False) -> str:
    """``table``: aligned text (numbers with 2 decimals, ``-`` when absent); ``csv``; ``json`` (records)."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected table, csv or json")
    if df.empty:
        return "no runs in this store\n"
    shown = df if wide else df.drop(columns=["experiment", "tables", "run_id"])
    columns = list(shown.columns)
    numeric = [c in ("N", "seed") or pd.api.types.is_float_dtype(shown[c]) for c in columns]

    def cell(v) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[cell(v) for v in shown[c]] for c in columns]
    widths = [max(len(c), *(len(x) for x in col)) for c, col in zip(columns, cells)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    rows = [line(columns)] + [line([col[i] for col in cells]) for i in range(len(shown))]
    return "\n".join(rows) + f"\n{len(df)} run(s)\n"
