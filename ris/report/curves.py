"""Curves (seaborn; each written as PNG and PDF) for one declared table.

* :func:`plot_precision`: precision P@X vs IoU threshold X, one line per table row, reproduced (solid)
  and published (dashed), one panel per dataset split;
* :func:`plot_num_masks`: CoupAlign suppl. Table 3 as curves, each metric vs the number of masks N;
* :func:`plot_training`: training loss and validation oIoU per epoch of every run of the table.

All numbers come from the same place as the tables (metrics.json + published facts via
:func:`ris.report.build.build_table`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns

from ris.metrics import THRESHOLDS
from ris.report.build import CITED, PUBLISHED, REPRODUCED, build_table, load_reproduced
from ris.report.canvas import blank, figure_title, plt, save_figure
from ris.report.published import dataset_display, load_published
from ris.report.spec import row_name, spec_datasets
from ris.utils import read_jsonl

PRECISION_METRICS = [f"P@{t}" for t in THRESHOLDS]
NUMBERS_STYLE = {REPRODUCED: "reproduced", PUBLISHED: "published", CITED: "published (cited)"}


def _points(spec: dict[str, Any], metric_files: Sequence[Path], metrics: list[str], published) -> pd.DataFrame:
    """Long table rows (reproduced, published, cited) for ``metrics``, with a legend name per table row."""
    sub = {**spec, "metrics": metrics}
    df = build_table(sub, load_reproduced(metric_files), load_published(published))
    df = df[df["numbers"].isin(list(NUMBERS_STYLE)) & df["value"].notna()].copy()
    rows = spec["cited"] + spec["runs"]
    df["row_index"] = df["row"]
    df["row"] = [row_name(spec, rows[i]) for i in df["row_index"]]
    df["numbers"] = df["numbers"].map(NUMBERS_STYLE)
    df["column"] = [f"{dataset_display(d)} {s}" for d, s in zip(df["dataset"], df["split"])]
    return df


def plot_precision(
    spec: dict[str, Any], metric_files: Sequence[Path], outs: Sequence[Path], published: Path | None = None
) -> pd.DataFrame:
    """P@X vs X per table row; reproduced solid, published dashed; one panel per dataset split."""
    df = _points(spec, metric_files, PRECISION_METRICS, published)
    df["threshold"] = df["metric"].str[2:].astype(float)
    columns = list(dict.fromkeys(f"{dataset_display(d)} {s}" for d, ss in spec_datasets(spec) for s in ss))
    sns.set_theme(style="whitegrid", context="paper")
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False, sharey=True)
    names = [n for n in dict.fromkeys(row_name(spec, r) for r in spec["cited"] + spec["runs"]) if n in set(df["row"])]
    palette = dict(zip(names, sns.color_palette("tab10", len(names))))
    dashes = {"reproduced": "", "published": (4, 2), "published (cited)": (1, 1)}
    for ax, col in zip(axes.flat, columns):
        d = df[df["column"] == col]
        if d.empty:
            blank(ax, "no numbers")
        else:
            sns.lineplot(
                data=d, x="threshold", y="value", hue="row", style="numbers", dashes=dashes, markers=True,
                palette=palette, hue_order=[n for n in names if n in set(d["row"])], errorbar=None, ax=ax,
            )  # fmt: skip
            ax.legend_.remove() if ax.legend_ else None
        ax.set(title=col, xlabel="IoU threshold X", ylabel="P@X (%)", xticks=list(THRESHOLDS), ylim=(0, 100))
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(figure_title(spec, "precision vs IoU threshold"))
    fig.tight_layout()
    save_figure(fig, outs)
    return df


def plot_num_masks(
    spec: dict[str, Any], metric_files: Sequence[Path], outs: Sequence[Path], published: Path | None = None
) -> pd.DataFrame:
    """Each metric of the table vs the number of masks N (reproduced with seed std bars, and published)."""
    df = _points(spec, metric_files, list(spec["metrics"]), published)
    runs = spec["cited"] + spec["runs"]
    df["N"] = [runs[i]["num_masks"] for i in df["row_index"]]
    metrics = list(spec["metrics"])
    sns.set_theme(style="whitegrid", context="paper")
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.2 * nrows), squeeze=False)
    colors = {"reproduced": sns.color_palette("deep")[0], "published": sns.color_palette("deep")[3]}
    first_col = df["column"].iloc[0] if len(df) else None
    for ax, metric in zip(axes.flat, metrics):
        d = df[(df["metric"] == metric) & (df["column"] == first_col)]
        if d.empty:
            blank(ax, f"no {metric} numbers")
        for kind, g in d.groupby("numbers", sort=False):
            g = g.sort_values("N")
            style = "-" if kind == "reproduced" else "--"
            std = g["std"].fillna(0).to_numpy(dtype=float) if kind == "reproduced" else None
            ax.errorbar(
                g["N"], g["value"], yerr=std if std is not None and std.any() else None, fmt="o" + style,
                color=colors.get(kind, "0.3"), label=kind, capsize=3,
            )  # fmt: skip
        ax.set(title=metric, xlabel="number of masks N", ylabel=f"{metric} (%)")
        ax.set_xticks(sorted({r["num_masks"] for r in spec["runs"]}))
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(figure_title(spec, f"metrics vs number of masks N ({first_col})"))
    fig.tight_layout()
    save_figure(fig, outs)
    return df


RUN_NAME = re.compile(r"^(?P<method>[^-]+)-(?P<backbone>[^-]+)-n(?P<num_masks>\d+)-s(?P<seed>\d+)$")


def run_from_history_path(path: Path) -> dict[str, Any]:
    """(dataset, method, backbone, num_masks, seed) of ``.../runs/<dataset>/<method>-<backbone>-n<N>-s<seed>/...``."""
    path = Path(path)
    m = RUN_NAME.match(path.parent.name)
    if not m:
        raise ValueError(f"{path}: not in a run directory named <method>-<backbone>-n<N>-s<seed>")
    return {
        "dataset": path.parent.parent.name,
        **m.groupdict(),
        "num_masks": int(m["num_masks"]),
        "seed": int(m["seed"]),
    }


def plot_training(spec: dict[str, Any], histories: Sequence[Path], outs: Sequence[Path]) -> pd.DataFrame:
    """Training loss and validation oIoU per epoch, one line per run of the table (mean and band over seeds).

    ``histories``: the runs' ``history.jsonl`` files, in their run directories (which name the run).
    """
    records = []
    for path in histories:
        run = run_from_history_path(path)
        for rec in read_jsonl(Path(path)):
            records.append({"run": row_name(spec, run), "dataset": run["dataset"], "seed": run["seed"], **rec})
    df = pd.DataFrame(records)
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if df.empty:
        for ax in axes:
            blank(ax, "no training history")
    else:
        order = list(dict.fromkeys(df["run"]))
        style = "dataset" if df["dataset"].nunique() > 1 else None
        for ax, (col, label) in zip(axes, [("train_loss", "training loss"), ("val_oIoU", "validation oIoU (%)")]):
            if col not in df:
                blank(ax, f"no {col}")
                continue
            data = df.dropna(subset=[col])  # epochs without validation (train.val_every_epochs) have no val_*
            sns.lineplot(data=data, x="epoch", y=col, hue="run", hue_order=order, style=style, marker="o", ax=ax)
            ax.set(title=label, xlabel="epoch", ylabel=label)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if axes[1].legend_:
            axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        if axes[0].legend_:
            axes[0].legend_.remove()
    fig.suptitle(figure_title(spec, "training curves"))
    fig.tight_layout()
    save_figure(fig, outs)
    return df
