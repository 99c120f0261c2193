"""Result tables from ``metrics.json`` files: a long CSV (machine-readable) and Markdown.

Numbers are aggregated over seeds (mean, and std when there are several); a run that is missing shows
as missing, never as zero.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ris.engine.evaluate import load_metrics
from ris.metrics import METRIC_NAMES
from ris.utils import atomic_path

RUN_COLUMNS = ["dataset", "method", "backbone", "num_masks"]


def aggregate(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and seed count per (run, split, metric)."""
    g = long.groupby([*RUN_COLUMNS, "split", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", std="std", seeds="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def fmt(mean: float, std: float, seeds: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" if seeds <= 1 else f"{mean:.2f} ± {std:.2f}"


def to_markdown(df: pd.DataFrame, caption: str = "") -> str:
    """A Markdown table: one row per run, one column per (split, metric)."""
    splits = list(dict.fromkeys(df["split"]))
    metrics = [m for m in METRIC_NAMES if m in set(df["metric"])]
    cols = [(s, m) for s in splits for m in metrics]
    header = ["Dataset", "Method", "Backbone", "N"] + [f"{s} {m}" for s, m in cols]
    lines = [f"**{caption}**", ""] if caption else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(cols)) + "|"]
    idx = df.set_index([*RUN_COLUMNS, "split", "metric"])
    for run in dict.fromkeys(map(tuple, df[RUN_COLUMNS].itertuples(index=False))):
        cells = []
        for s, m in cols:
            key = (*run, s, m)
            cells.append(fmt(*idx.loc[key, ["mean", "std", "seeds"]]) if key in idx.index else "-")
        lines.append("| " + " | ".join([str(run[0]), str(run[1]), str(run[2]), str(run[3])] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary_tables(
    metric_files: list[Path], out_csv: Path, out_md: Path, caption: str = ""
) -> pd.DataFrame:
    """Collect metrics.json files into ``out_csv`` (long format) and ``out_md``."""
    if not metric_files:
        raise ValueError("no metrics.json files given")
    df = aggregate(load_metrics(metric_files))
    with atomic_path(Path(out_csv)) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(df, caption))
    return df
