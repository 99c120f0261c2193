"""Figures (seaborn; each written as PNG and PDF) for one declared table.

* :func:`plot_precision`: precision P@X vs IoU threshold X, one line per table row, reproduced (solid)
  and published (dashed), one panel per dataset split;
* :func:`plot_num_masks`: CoupAlign suppl. Table 3 as curves, each metric vs the number of masks N;
* :func:`plot_training`: training loss and validation oIoU per epoch of every run of the table;
* :func:`plot_qualitative`: a grid like the CoupAlign paper's figures (image, ground truth and each
  run's prediction overlaid, the expression as title) for the samples the table's last run (the paper's
  own method) gets best (successes) or worst (failures).

All numbers come from the same place as the tables (metrics.json + published facts via
:func:`ris.report.tables.build_table`); predictions from the ``pred_rle`` column of ``samples.csv``.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from ris.metrics import THRESHOLDS  # noqa: E402
from ris.report.published import dataset_display, load_published  # noqa: E402
from ris.report.tables import CITED, PUBLISHED, REPRODUCED, build_table, row_name, spec_datasets  # noqa: E402
from ris.utils import atomic_path, read_jsonl  # noqa: E402

PRECISION_METRICS = [f"P@{t}" for t in THRESHOLDS]
NUMBERS_STYLE = {REPRODUCED: "reproduced", PUBLISHED: "published", CITED: "published (cited)"}
GT_COLOR = (1.0, 1.0, 1.0)  # white outline
PRED_COLOR = (1.0, 0.6, 0.0)  # orange outline


def save_figure(fig: plt.Figure, outs: Sequence[Path]) -> None:
    """Write ``fig`` to every path in ``outs`` (format from the suffix: .png, .pdf, .svg), atomically."""
    for out in outs:
        out = Path(out)
        fmt = out.suffix.lstrip(".").lower() or "png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")
    plt.close(fig)


def _load_reproduced(metric_files: Sequence[Path]) -> pd.DataFrame | None:
    from ris.evaluation.results import load_metrics

    existing = [Path(p) for p in metric_files if Path(p).exists()]
    return load_metrics(existing) if existing else None


def _points(spec: dict[str, Any], metric_files: Sequence[Path], metrics: list[str], published) -> pd.DataFrame:
    """Long table rows (reproduced, published, cited) for ``metrics``, with a legend name per table row."""
    sub = {**spec, "metrics": metrics}
    df = build_table(sub, _load_reproduced(metric_files), load_published(published))
    df = df[df["numbers"].isin(list(NUMBERS_STYLE)) & df["value"].notna()].copy()
    rows = spec["cited"] + spec["runs"]
    df["row_index"] = df["row"]
    df["row"] = [row_name(spec, rows[i]) for i in df["row_index"]]
    df["numbers"] = df["numbers"].map(NUMBERS_STYLE)
    df["column"] = [f"{dataset_display(d)} {s}" for d, s in zip(df["dataset"], df["split"])]
    return df


def _blank(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _title(spec: dict[str, Any], what: str) -> str:
    note = " (demo scale: synthetic data)" if spec.get("note") else ""
    return f"{spec['name']}: {what}{note}"


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
            _blank(ax, "no numbers")
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
    fig.suptitle(_title(spec, "precision vs IoU threshold"))
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
            _blank(ax, f"no {metric} numbers")
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
    fig.suptitle(_title(spec, f"metrics vs number of masks N ({first_col})"))
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
            _blank(ax, "no training history")
    else:
        order = list(dict.fromkeys(df["run"]))
        style = "dataset" if df["dataset"].nunique() > 1 else None
        for ax, (col, label) in zip(axes, [("train_loss", "training loss"), ("val_oIoU", "validation oIoU (%)")]):
            if col not in df:
                _blank(ax, f"no {col}")
                continue
            data = df.dropna(subset=[col])  # epochs without validation (train.val_every_epochs) have no val_*
            sns.lineplot(data=data, x="epoch", y=col, hue="run", hue_order=order, style=style, marker="o", ax=ax)
            ax.set(title=label, xlabel="epoch", ylabel=label)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if axes[1].legend_:
            axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        if axes[0].legend_:
            axes[0].legend_.remove()
    fig.suptitle(_title(spec, "training curves"))
    fig.tight_layout()
    save_figure(fig, outs)
    return df


# --------------------------------------------------------------------------------------------------
# Qualitative grids


def _decode(rle: str, height: int, width: int) -> np.ndarray:
    from ris.data.refer import decode_rle

    return decode_rle(rle, height, width).astype(bool)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0


def _edge(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its boundary (the image border is not a boundary)."""
    padded = np.pad(mask, width, mode="edge")
    inner = np.ones_like(mask)
    h, w = mask.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            inner &= padded[width + dy : width + dy + h, width + dx : width + dx + w]
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float], dim: float = 0.35) -> np.ndarray:
    """RGB float image with everything outside ``mask`` dimmed and the mask outlined in ``color``.

    Dimming rather than tinting keeps the object's own colours readable (the synthetic objects are red,
    green, blue, purple, ...); a black ring inside the coloured outline keeps it visible on any colour.
    """
    out = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32).copy()
    out[~mask] *= dim
    width = max(1, min(mask.shape) // 160)
    out[_edge(mask, 2 * width)] = 0.0
    out[_edge(mask, width)] = np.asarray(color, dtype=np.float32)
    return np.clip(out, 0, 1)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _truth_mask(truth: pd.DataFrame, ref_id: int, sent_id: int, height: int, width: int) -> np.ndarray:
    """Ground-truth mask of a sample (``truth``: the prepared split indexed by ref and sentence) at an image size."""
    row = truth.loc[(ref_id, sent_id)]
    return _resize_mask(_decode(row["rle"], int(row["height"]), int(row["width"])), height, width)


def _pred_mask(rle: str, size: int, height: int, width: int) -> np.ndarray:
    """A stored prediction (``samples.csv``: RLE at the evaluation size) at an image size."""
    return _resize_mask(_decode(rle, size, size), height, width)


def _wrap(sentence: str) -> str:
    return "\n".join(textwrap.wrap(f'"{sentence}"', 28))


def _draw_panels(axes_row: Sequence[plt.Axes], panels: Sequence[tuple[np.ndarray | None, str]]) -> None:
    """One grid row: each panel's image (or "missing") without ticks, under its title."""
    for ax, (img, title) in zip(axes_row, panels):
        if img is None:
            _blank(ax, "missing")
        else:
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=8)


def select_samples(samples: pd.DataFrame, k: int, worst: bool) -> pd.DataFrame:
    """``k`` samples of distinct refs with the highest (or lowest) IoU; ties broken by ids, deterministic."""
    order = samples.sort_values(["iou", "ref_id", "sent_id"], ascending=[worst, True, True], kind="mergesort")
    return order.drop_duplicates("ref_id").head(k)


def plot_qualitative(
    spec: dict[str, Any],
    samples_files: Sequence[Path],
    split_table: Path,
    images_dir: Path,
    outs_successes: Sequence[Path],
    outs_failures: Sequence[Path],
    k: int = 4,
) -> dict[str, pd.DataFrame]:
    """Grids of image | ground truth | each run's prediction, for the best and worst samples.

    ``samples_files``: one ``samples.csv`` per run of the table (same order as ``spec['runs']``), all on
    the table's first dataset split. Samples are ranked by the IoU of the table's last run.
    """
    from ris.data.prepare import read_split

    if len(samples_files) != len(spec["runs"]):
        raise ValueError(f"{len(samples_files)} samples.csv files for {len(spec['runs'])} runs")
    runs = [
        (row_name(spec, r), pd.read_csv(p) if Path(p).exists() else None) for r, p in zip(spec["runs"], samples_files)
    ]
    focus_name, focus = runs[-1]
    if focus is None or focus.empty:
        raise FileNotFoundError(f"{samples_files[-1]}: samples of the ranking run not found or empty")
    truth = read_split(Path(split_table)).set_index(["ref_id", "sent_id"])
    d0, splits0 = spec_datasets(spec)[0]
    where = f"{dataset_display(d0)} {splits0[0]}"
    chosen = {}
    for kind, worst, outs in (("successes", False, outs_successes), ("failures", True, outs_failures)):
        picked = select_samples(focus, k, worst)
        chosen[kind] = picked
        ncols = 2 + len(runs)
        fig, axes = plt.subplots(len(picked) or 1, ncols, figsize=(2.3 * ncols, 2.8 * max(1, len(picked))))
        axes = np.atleast_2d(axes)
        if picked.empty:
            for ax in axes.flat:
                _blank(ax, "no samples")
        for i, s in enumerate(picked.itertuples()):
            image = _load_rgb(Path(images_dir) / s.file_name)
            h, w = image.shape[:2]
            gt = _truth_mask(truth, s.ref_id, s.sent_id, h, w)
            expression = _wrap(s.sentence)
            panels = [(image / 255.0, expression), (overlay(image, gt, GT_COLOR), "ground truth")]
            for name, df in runs:
                hit = None if df is None else df[(df["ref_id"] == s.ref_id) & (df["sent_id"] == s.sent_id)]
                if hit is None or hit.empty or "pred_rle" not in hit or pd.isna(hit["pred_rle"].iloc[0]):
                    panels.append((None, f"{name}\n(no prediction stored)"))
                    continue
                pred = _pred_mask(hit["pred_rle"].iloc[0], int(hit["pred_size"].iloc[0]), h, w)
                panels.append((overlay(image, pred, PRED_COLOR), f"{name}\nIoU {100 * hit['iou'].iloc[0]:.1f}"))
            _draw_panels(axes[i], panels)
        what = "best" if not worst else "worst"
        fig.suptitle(
            _title(spec, f"{kind} ({what} IoU of {focus_name}, {where})")
            + "\noutlined: ground truth (white), prediction (orange); outside the mask dimmed",
            fontsize=9,
        )
        fig.tight_layout()
        save_figure(fig, outs)
    return chosen


def select_swap_pairs(samples: pd.DataFrame, k: int) -> list[tuple[Any, Any]]:
    """``k`` images with two refs, one sentence each: those whose two predictions are both best (highest
    lower IoU of the two), ties broken by ids; deterministic."""
    first = samples.sort_values(["ref_id", "sent_id"], kind="mergesort").drop_duplicates("ref_id")
    pairs = []
    for _, g in first.groupby("image_id", sort=True):
        if len(g) >= 2:
            a, b = g.iloc[0], g.iloc[1]
            pairs.append((min(a["iou"], b["iou"]), int(a["ref_id"]), a, b))
    pairs.sort(key=lambda p: (-p[0], p[1]))
    return [(a, b) for _, _, a, b in pairs[:k]]


def plot_swap(
    spec: dict[str, Any], samples_file: Path, split_table: Path, images_dir: Path, outs: Sequence[Path], k: int = 4
) -> list[tuple[Any, Any]]:
    """ "Swap the sentence": one image per row, the predictions of one run for two of its refs' sentences.

    A model that follows the sentence outlines a different object in each prediction panel; one that
    ignores it outlines the same one twice. The run is the table's last (as the other grids rank by).
    """
    from ris.data.prepare import read_split

    name = row_name(spec, spec["runs"][-1])
    samples = pd.read_csv(samples_file)
    truth = read_split(Path(split_table)).set_index(["ref_id", "sent_id"])
    pairs = select_swap_pairs(samples, k)
    fig, axes = plt.subplots(len(pairs) or 1, 5, figsize=(2.3 * 5, 2.8 * max(1, len(pairs))))
    axes = np.atleast_2d(axes)
    if not pairs:
        for ax in axes.flat:
            _blank(ax, "no image with two refs")
    for i, pair in enumerate(pairs):
        image = _load_rgb(Path(images_dir) / pair[0]["file_name"])
        h, w = image.shape[:2]
        panels: list[tuple[np.ndarray | None, str]] = [(image / 255.0, "image")]
        for s in pair:
            gt = _truth_mask(truth, s["ref_id"], s["sent_id"], h, w)
            pred = _pred_mask(s["pred_rle"], int(s["pred_size"]), h, w)
            panels.append((overlay(image, gt, GT_COLOR), f"{_wrap(s['sentence'])}\nground truth"))
            panels.append((overlay(image, pred, PRED_COLOR), f"{name}\nIoU {100 * s['iou']:.1f}"))
        _draw_panels(axes[i], panels)
    d0, splits0 = spec_datasets(spec)[0]
    fig.suptitle(
        _title(spec, f"swap the sentence ({name}, {dataset_display(d0)} {splits0[0]})")
        + "\nsame image, two expressions: ground truth (white) and prediction (orange) for each",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, outs)
    return pairs


def table_figures(spec: dict[str, Any]) -> list[str]:
    """Figure names of a table: precision, training and qualitative grids for every table, and ``num_masks``
    when its runs span at least three values of N (CoupAlign suppl. Table 3)."""
    names = ["precision", "training", "qualitative_successes", "qualitative_failures", "qualitative_swap"]
    if len({r["num_masks"] for r in spec["runs"]}) >= 3:
        names.insert(1, "num_masks")
    return names
