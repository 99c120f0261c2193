"""What each method can read: mIoU and RefAcc per expression type of the synthetic dataset's sentences.

The generator labels every sentence with the semantic spec it was realised from (``specs.json``:
``sent_id -> spec``); :func:`ris.data.expressions.expression_type` turns a spec into one of
:data:`~ris.data.expressions.EXPRESSION_TYPES` (shape, colour, size, several attributes, superlative,
relation). Joined with each run's ``samples.csv`` (one row per evaluated sentence: ``sent_id``, ``iou``,
``refers``), this gives the demo table ``expression_types.{csv,md}`` and its figure:

* ``samples``: sentences of the type in the split; ``mIoU``: their mean IoU (%);
* ``RefAcc``: the share (%) of the eligible ones (``refers`` not NaN: images with two or more refs) whose
  prediction overlaps the named object more than any other ref's; ``refacc_samples``: how many were eligible;
* ``RefAcc_ci95_low``/``_high``: its 95% Wilson score interval (:func:`ris.report.stats.wilson_interval`),
  which stays inside [0, 100] and is honest for small counts and for rates near 0 or 100%.

Every type is listed for every run, with ``samples`` 0 (and no numbers) where the split has none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ris.data.expressions import EXPRESSION_TYPES, expression_type
from ris.report.stats import REFERS, read_samples, wilson_interval
from ris.utils import atomic_path

COLUMNS = [
    "run",
    "expression_type",
    "samples",
    "mIoU",
    "RefAcc",
    "RefAcc_ci95_low",
    "RefAcc_ci95_high",
    "refacc_samples",
]
SAMPLES_NEEDED = ("sent_id", "iou", REFERS)


def load_expression_types(specs_json: Path) -> dict[int, str]:
    """``sent_id -> expression type`` of every sentence in a generator's ``specs.json``.

    Raises FileNotFoundError or ValueError naming the file (and the sentence) when it is missing, is not a
    JSON object of specs, or holds a spec that is not one.
    """
    path = Path(specs_json)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no specs.json (written by `ris synthesize` beside refs(unc).p; only synthetic datasets have one)"
        )
    try:
        specs = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected an object sent_id -> semantic spec") from e
    if not isinstance(specs, dict) or not specs:
        got = type(specs).__name__ if specs else "an empty one"
        raise ValueError(f"{path}: expected a non-empty JSON object sent_id -> semantic spec, got {got}")
    types = {}
    for sent_id, spec in specs.items():
        try:
            types[int(sent_id)] = expression_type(spec)
        except ValueError as e:
            raise ValueError(f"{path}: sentence {sent_id!r}: {e}") from e
    return types


def expression_type_table(runs: Sequence[tuple[str, Path]], specs_json: Path) -> pd.DataFrame:
    """One row per (run, expression type), columns :data:`COLUMNS`, runs in the given order.

    ``runs``: (name, ``samples.csv``) pairs, all on one split of the dataset ``specs_json`` belongs to; a
    sample whose sentence is not in ``specs_json`` is an error (a samples.csv of another dataset).
    """
    types = load_expression_types(specs_json)
    records: list[dict[str, Any]] = []
    for name, path in runs:
        df = read_samples(path, SAMPLES_NEEDED)
        unknown = sorted(set(df["sent_id"].astype(int)) - set(types))
        if unknown:
            raise ValueError(
                f"{path}: {len(unknown)} sentence(s) not in {specs_json} (e.g. sent_id {unknown[0]}); "
                "the samples and specs.json must come from the same dataset"
            )
        df["expression_type"] = df["sent_id"].astype(int).map(types)
        for kind in EXPRESSION_TYPES:
            sub = df[df["expression_type"] == kind]
            refers = sub[REFERS].dropna().to_numpy(dtype=float)
            rec: dict[str, Any] = {"run": name, "expression_type": kind, "samples": len(sub)}
            rec["refacc_samples"] = len(refers)
            if len(sub):
                rec["mIoU"] = 100.0 * float(sub["iou"].mean())
            if len(refers):
                hits = int(np.sum(refers > 0.5))
                low, high = wilson_interval(hits, len(refers))
                rec |= {"RefAcc": 100.0 * hits / len(refers), "RefAcc_ci95_low": 100 * low}
                rec["RefAcc_ci95_high"] = 100 * high
            records.append(rec)
    out = pd.DataFrame.from_records(records, columns=COLUMNS)
    return out.astype({"samples": int, "refacc_samples": int})


def to_markdown(df: pd.DataFrame, caption: str = "") -> str:
    """The table as GitHub Markdown: one row per (run, type); RefAcc with its interval."""

    def num(v: float) -> str:
        return "-" if pd.isna(v) else f"{v:.1f}"

    lines = [f"**Table `expression_types`.** mIoU and RefAcc per expression type. {caption}".rstrip(), ""]
    lines.append("| Run | Expression type | Samples | mIoU | RefAcc [95% CI] |")
    lines.append("|:---|:---|---:|---:|---:|")
    for r in df.itertuples():
        acc = "-" if pd.isna(r.RefAcc) else f"{r.RefAcc:.1f} [{r.RefAcc_ci95_low:.1f}, {r.RefAcc_ci95_high:.1f}]"
        lines.append(f"| {r.run} | {r.expression_type} | {r.samples} | {num(r.mIoU)} | {acc} |")
    lines += [
        "",
        "- Expression types (ris/data/expressions.py): shape, colour or size alone; several attributes; a "
        "superlative (the leftmost circle); a relation to another object (the circle left of the blue star).",
        "- RefAcc: share of the samples of images with two or more refs whose prediction overlaps the named "
        "object more than any other ref's; [95% Wilson score interval].",
    ]
    return "\n".join(lines) + "\n"


def write_expression_types(
    runs: Sequence[tuple[str, Path]], specs_json: Path, out_csv: Path, out_md: Path, caption: str = ""
) -> pd.DataFrame:
    """Write the table as CSV and Markdown (atomically) and return it."""
    df = expression_type_table(runs, specs_json)
    with atomic_path(Path(out_csv)) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(df, caption))
    return df


def plot_expression_types(df: pd.DataFrame, outs: Sequence[Path], title: str = "") -> None:
    """RefAcc per expression type (x) and run (colour), with the 95% Wilson intervals as error bars; ``title``
    (e.g. the table's caption) goes under the figure's own."""
    import seaborn as sns

    from ris.report.canvas import blank, plt, save_figure

    sns.set_theme(style="whitegrid", context="paper")
    runs = list(dict.fromkeys(df["run"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(EXPRESSION_TYPES) + 0.15 * len(runs)), 3.8))
    data = df.dropna(subset=["RefAcc"])
    if data.empty:
        blank(ax, "no RefAcc (no eligible sample)")
    else:
        palette = dict(zip(runs, sns.color_palette("tab10" if len(runs) <= 10 else "husl", len(runs))))
        width = 0.8 / max(1, len(runs))
        for i, run in enumerate(runs):
            d = data[data["run"] == run]
            x = np.array([EXPRESSION_TYPES.index(t) for t in d["expression_type"]]) - 0.4 + width * (i + 0.5)
            err = np.clip(np.vstack([d["RefAcc"] - d["RefAcc_ci95_low"], d["RefAcc_ci95_high"] - d["RefAcc"]]), 0, None)
            ax.errorbar(x, d["RefAcc"], yerr=err, fmt="o", ms=4, capsize=2, color=palette[run], label=run)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks(range(len(EXPRESSION_TYPES)), EXPRESSION_TYPES, rotation=15)
    ax.set(xlabel="expression type", ylabel="RefAcc (%) [95% Wilson CI]", ylim=(0, 102))
    ax.set_title("RefAcc per expression type" + (f"\n{title}" if title else ""), fontsize=9)
    fig.tight_layout()
    save_figure(fig, outs)
