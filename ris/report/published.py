"""Published numbers (with their sources) and the display names used in tables and figures.

The facts live in ``ris/resources/published_results.csv`` (long format: one number per row, each with
the table it was printed in, the method, backbone, number of masks N, dataset, split, metric, value and
source). This module is the one place where the config's lower-case method names (``lavt``) meet the
papers' display names (``LAVT``), and where dataset/backbone names get their printed form.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from ris.metrics import METRIC_NAMES

#: config method name -> the name the papers (and the published CSV) print.
METHOD_DISPLAY: dict[str, str] = {
    "lavt": "LAVT",
    "coupalign": "CoupAlign",
    "eavl": "EAVL",
    "jmceln": "JMCELN",
}

#: backbone name (timm family used in config) -> printed name.
BACKBONE_DISPLAY: dict[str, str] = {
    "swin_b": "Swin-B",
    "resnet101": "ResNet-101",
    "darknet53": "Darknet-53",
}

#: dataset name (config / published CSV) -> printed name; splits of RefCOCOg carry the partition.
DATASET_DISPLAY: dict[str, str] = {
    "refcoco": "RefCOCO",
    "refcoco+": "RefCOCO+",
    "refcocog_umd": "RefCOCOg (U)",
    "refcocog_google": "RefCOCOg (G)",
    "refcoco_google": "RefCOCO (G)",
    "synthetic": "Synthetic",
}

COLUMNS = ["table", "method", "backbone", "num_masks", "dataset", "split", "metric", "value", "source"]


def method_display(method: str) -> str:
    """Printed name of a method: ``lavt`` -> ``LAVT``; names not in the map (cited methods) pass through."""
    return METHOD_DISPLAY.get(method, method)


def method_key(display: str) -> str:
    """Config name of a printed method name (``CoupAlign`` -> ``coupalign``); unknown names pass through."""
    inverse = {v.lower(): k for k, v in METHOD_DISPLAY.items()}
    return inverse.get(display.lower(), display)


def backbone_display(backbone: str) -> str:
    return BACKBONE_DISPLAY.get(backbone, backbone)


def dataset_display(dataset: str) -> str:
    return DATASET_DISPLAY.get(dataset, dataset)


def default_path() -> Path:
    """The project's copy of the published facts (shipped as package data)."""
    return Path(str(resources.files("ris") / "resources" / "published_results.csv"))


def load_published(path: Path | None = None) -> pd.DataFrame:
    """The published facts as a DataFrame; ``num_masks`` empty in the file (no masks) becomes 0.

    Checks the columns, that every metric is one of ours, and that no number is given twice with
    different values (the same fact may be quoted by several sources).
    """
    path = Path(path) if path else default_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: published results file not found")
    df = pd.read_csv(path, dtype={"table": str, "method": str, "backbone": str, "dataset": str, "split": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    df["num_masks"] = df["num_masks"].fillna(0).astype(int)
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    unknown = sorted(set(df["metric"]) - set(METRIC_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown metric(s) {', '.join(unknown)}; expected {', '.join(METRIC_NAMES)}")
    if df["source"].isna().any() or (df["source"].astype(str).str.strip() == "").any():
        raise ValueError(f"{path}: every published number needs a source")
    key = ["table", "method", "backbone", "num_masks", "dataset", "split", "metric"]
    dup = df[df.duplicated(key, keep=False)]
    if len(dup) and dup.groupby(key)["value"].nunique().max() > 1:
        raise ValueError(f"{path}: conflicting values for the same published number:\n{dup.to_string()}")
    return df.drop_duplicates(key).reset_index(drop=True)


def published_for(df: pd.DataFrame, table: str, method: str, backbone: str, num_masks: int) -> pd.DataFrame:
    """Published numbers of one row of a paper table (``method`` as config or display name)."""
    name = method_display(method)
    sel = (
        (df["table"] == table)
        & (df["method"].str.lower() == name.lower())
        & (df["backbone"] == backbone)
        & (df["num_masks"] == int(num_masks))
    )
    return df[sel]
