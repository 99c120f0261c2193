"""Figures (seaborn): per-split metrics of every run, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ris.utils import atomic_path, read_jsonl  # noqa: E402


def _save(fig: plt.Figure, out: Path) -> None:
    with atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_summary(table_csv: Path, out: Path, histories: list[Path] | None = None) -> None:
    """Bars of oIoU per run and split; training loss and val oIoU curves beside them."""
    df = pd.read_csv(table_csv)
    df = df[df["metric"] == "oIoU"].copy()
    df["run"] = df["method"] + "/" + df["backbone"] + "/N=" + df["num_masks"].astype(str)
    sns.set_theme(style="whitegrid")
    ncols = 3 if histories else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    sns.barplot(
        data=df, x="split", y="mean", hue="run", errorbar=None, ax=ax, palette="deep", dodge=True, alpha=0.9
    )
    ax.set(ylabel="oIoU (%)", title="Reproduced oIoU per split")
    if histories:
        curves = []
        for h in histories:
            for rec in read_jsonl(h):
                curves.append({"run": Path(h).parent.name, **rec})
        c = pd.DataFrame(curves)
        sns.lineplot(data=c, x="epoch", y="train_loss", hue="run", marker="o", ax=axes[0, 1])
        axes[0, 1].set(title="Training loss")
        sns.lineplot(data=c, x="epoch", y="val_oIoU", hue="run", marker="o", ax=axes[0, 2])
        axes[0, 2].set(title="Validation oIoU (%)")
    _save(fig, out)
