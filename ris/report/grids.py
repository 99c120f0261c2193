"""Qualitative grids (PNG and PDF) for one declared table, like the CoupAlign paper's figures.

* :func:`plot_qualitative`: image, ground truth and each run's prediction overlaid, the expression as
  title, for the samples the table's last run (the paper's own method) gets best (successes) or worst
  (failures);
* :func:`plot_swap`: "swap the sentence": one image, two of its expressions, one run's prediction for each.

Predictions come from the ``pred_rle`` column of ``samples.csv``; ground truth from the prepared split.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ris.report.canvas import blank, figure_title, plt, save_figure
from ris.report.published import dataset_display
from ris.report.spec import row_name, spec_datasets

GT_COLOR = (1.0, 1.0, 1.0)  # white outline
PRED_COLOR = (1.0, 0.6, 0.0)  # orange outline


def decode_mask(rle: str, height: int, width: int) -> np.ndarray:
    from ris.data.refer import decode_rle

    return decode_rle(rle, height, width).astype(bool)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
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


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _truth_mask(truth: pd.DataFrame, ref_id: int, sent_id: int, height: int, width: int) -> np.ndarray:
    """Ground-truth mask of a sample (``truth``: the prepared split indexed by ref and sentence) at an image size."""
    row = truth.loc[(ref_id, sent_id)]
    return resize_mask(decode_mask(row["rle"], int(row["height"]), int(row["width"])), height, width)


def _pred_mask(rle: str, size: int, height: int, width: int) -> np.ndarray:
    """A stored prediction (``samples.csv``: RLE at the evaluation size) at an image size."""
    return resize_mask(decode_mask(rle, size, size), height, width)


def wrap(sentence: str) -> str:
    return "\n".join(textwrap.wrap(f'"{sentence}"', 28))


def draw_panels(axes_row: Sequence[plt.Axes], panels: Sequence[tuple[np.ndarray | None, str]]) -> None:
    """One grid row: each panel's image (or "missing") without ticks, under its title."""
    for ax, (img, title) in zip(axes_row, panels):
        if img is None:
            blank(ax, "missing")
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
                blank(ax, "no samples")
        for i, s in enumerate(picked.itertuples()):
            image = load_rgb(Path(images_dir) / s.file_name)
            h, w = image.shape[:2]
            gt = _truth_mask(truth, s.ref_id, s.sent_id, h, w)
            expression = wrap(s.sentence)
            panels = [(image / 255.0, expression), (overlay(image, gt, GT_COLOR), "ground truth")]
            for name, df in runs:
                hit = None if df is None else df[(df["ref_id"] == s.ref_id) & (df["sent_id"] == s.sent_id)]
                if hit is None or hit.empty or "pred_rle" not in hit or pd.isna(hit["pred_rle"].iloc[0]):
                    panels.append((None, f"{name}\n(no prediction stored)"))
                    continue
                pred = _pred_mask(hit["pred_rle"].iloc[0], int(hit["pred_size"].iloc[0]), h, w)
                panels.append((overlay(image, pred, PRED_COLOR), f"{name}\nIoU {100 * hit['iou'].iloc[0]:.1f}"))
            draw_panels(axes[i], panels)
        what = "best" if not worst else "worst"
        _finish(
            fig, spec, f"{kind} ({what} IoU of {focus_name}, {where})",
            "outlined: ground truth (white), prediction (orange); outside the mask dimmed", outs,
        )  # fmt: skip
    return chosen


def _finish(fig: plt.Figure, spec: dict[str, Any], what: str, legend: str, outs: Sequence[Path]) -> None:
    """Title a grid (what it shows, then how to read it), lay it out and write it to every path of ``outs``."""
    fig.suptitle(figure_title(spec, what) + "\n" + legend, fontsize=9)
    fig.tight_layout()
    save_figure(fig, outs)


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
            blank(ax, "no image with two refs")
    for i, pair in enumerate(pairs):
        image = load_rgb(Path(images_dir) / pair[0]["file_name"])
        h, w = image.shape[:2]
        panels: list[tuple[np.ndarray | None, str]] = [(image / 255.0, "image")]
        for s in pair:
            gt = _truth_mask(truth, s["ref_id"], s["sent_id"], h, w)
            pred = _pred_mask(s["pred_rle"], int(s["pred_size"]), h, w)
            panels.append((overlay(image, gt, GT_COLOR), f"{wrap(s['sentence'])}\nground truth"))
            panels.append((overlay(image, pred, PRED_COLOR), f"{name}\nIoU {100 * s['iou']:.1f}"))
        draw_panels(axes[i], panels)
    d0, splits0 = spec_datasets(spec)[0]
    _finish(
        fig, spec, f"swap the sentence ({name}, {dataset_display(d0)} {splits0[0]})",
        "same image, two expressions: ground truth (white) and prediction (orange) for each", outs,
    )  # fmt: skip
    return pairs
