"""What every figure shares: matplotlib without a display, writing a figure to PNG/PDF atomically, an empty
panel's message, and the title naming the table (:mod:`ris.report.curves`, :mod:`ris.report.grids`).

Importing this module imports matplotlib: the light modules (:mod:`ris.report.spec`) never import it, so
the Snakefile parses without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ris.utils import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, outs: Sequence[Path]) -> None:
    """Write ``fig`` to every path in ``outs`` (format from the suffix: .png, .pdf, .svg), atomically."""
    for out in outs:
        out = Path(out)
        fmt = out.suffix.lstrip(".").lower() or "png"
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")
    plt.close(fig)


def blank(ax: plt.Axes, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def figure_title(spec: dict[str, Any], what: str) -> str:
    """A figure's title: the table's name, what is drawn, and whether it is a rehearsal's or demo-scale (synthetic)
    data."""
    if spec.get("rehearsal"):
        note = " (REHEARSAL: a slice, the numbers measure nothing)"
    else:
        note = " (demo scale: synthetic data)" if spec.get("note") else ""
    return f"{spec['name']}: {what}{note}"
