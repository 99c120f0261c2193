"""Are the N masks N hypotheses? The table of every multi-mask run's diagnostics, and a figure per method.

``ris evaluate`` writes ``mask_diagnostics.json`` beside a split's metrics for every model whose prediction is
a weighted sum of N masks (:mod:`ris.evaluation.mask_diagnostics`: definitions there). This module gathers
them into ``results/tables/mask_diagnostics.{csv,md}`` (one row per run) and draws, per method, a few
samples: the image with the referred object outlined and the sentence, the highest-weighted masks with their
weights, and the final mask (as EAVL's Fig. 4 shows "masks focusing on different regions" with their scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ris.utils import atomic_path, read_json

METRICS = ["distinct_masks", "weight_entropy", "top_mask_hit", "object_recall", "query_cosine", "top_weight"]
COLUMNS = ["run", "method", "backbone", "num_masks", "seed", "split", "samples", *METRICS]


def read_diagnostics(path: Path) -> dict[str, Any]:
    """One run's ``mask_diagnostics.json``, with a clear error naming the file when it is not one."""
    record = read_json(path)
    missing = [k for k in ("run", "method", "split", "metrics") if k not in record]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}; expected a mask_diagnostics.json")
    return record


def diagnostics_table(paths: Sequence[Path]) -> pd.DataFrame:
    """One row per run (sorted by method, backbone, N, seed): its split, samples and mean diagnostics."""
    rows = []
    for path in paths:
        r = read_diagnostics(path)
        m = r["metrics"]
        rows.append(
            {
                **{k: r.get(k) for k in ("run", "method", "backbone", "num_masks", "seed", "split")},
                "samples": m.get("samples"),
                **{k: m.get(k, np.nan) for k in METRICS},
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["method", "backbone", "num_masks", "seed"], ignore_index=True)


def to_markdown(df: pd.DataFrame, definitions: dict[str, str]) -> str:
    """The table as Markdown, with what each column means."""
    lines = [
        "# Mask diagnostics: are the N masks N hypotheses?",
        "",
        "| run | split | samples | distinct masks | weight entropy | top-mask hit | object recall | query cosine |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples():
        cells = [f"{getattr(r, k):.2f}" if pd.notna(getattr(r, k)) else "-" for k in METRICS[:5]]
        lines.append(f"| {r.run} | {r.split} | {r.samples} | " + " | ".join(cells) + " |")
    lines += ["", "Means over the split's samples:"]
    lines += [f"- **{k.replace('_', ' ')}**: {definitions[k]}" for k in METRICS[:5] if k in definitions]
    lines.append(
        "- collapsed masks read distinct 1, entropy 1, query cosine 1; hypotheses read distinct >= 2, low entropy"
    )
    return "\n".join(lines) + "\n"


def write_diagnostics_table(paths: Sequence[Path], out_csv: Path, out_md: Path) -> pd.DataFrame:
    """Write the table as CSV and Markdown (atomically) and return it."""
    from ris.evaluation.mask_diagnostics import DEFINITIONS

    df = diagnostics_table(paths)
    with atomic_path(Path(out_csv)) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(df, DEFINITIONS))
    return df


def plot_hypotheses(path: Path, prepared_split: Path, images_dir: Path, outs: Sequence[Path]) -> None:
    """A run's example samples (rows): the image with the referred object and the sentence, its highest-weighted
    masks with their weights, and the final mask."""
    from ris.data.prepare import read_split
    from ris.report.canvas import blank, plt, save_figure
    from ris.report.grids import GT_COLOR, PRED_COLOR, decode_mask, draw_panels, load_rgb, overlay, resize_mask, wrap

    record = read_diagnostics(path)
    table = read_split(prepared_split)
    examples = record.get("examples", [])
    top = max((len(e["masks"]) for e in examples), default=1)
    fig, axes = plt.subplots(max(len(examples), 1), top + 2, figsize=(2.1 * (top + 2), 2.3 * max(len(examples), 1)))
    axes = np.atleast_2d(axes)
    if not examples:
        blank(axes[0, 0], "no examples")
    for row_axes, ex in zip(axes, examples):
        row = table.iloc[int(ex["row"])]
        h, w = int(row["height"]), int(row["width"])
        image = load_rgb(Path(images_dir) / row["file_name"])
        truth = decode_mask(row["rle"], h, w)
        size = int(record.get("image_size", 0)) or None
        panels: list[tuple[np.ndarray | None, str]] = [(overlay(image, truth, GT_COLOR), wrap(row["sentence"]))]
        for i, (rle, weight) in enumerate(zip(ex["masks"], ex["weights"])):
            mask = resize_mask(decode_mask(rle, size or h, size or w), h, w)
            panels.append((overlay(image, mask, PRED_COLOR), f"mask {ex['mask_index'][i]}: w = {weight:.2f}"))
        panels += [(None, "")] * (top + 1 - len(panels))
        final = resize_mask(decode_mask(ex["prediction"], size or h, size or w), h, w)
        panels.append((overlay(image, final, PRED_COLOR), "final mask"))
        draw_panels(row_axes, panels)
    fig.suptitle(f"{record['run']}: highest-weighted masks ({record['split']} samples)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, outs)
