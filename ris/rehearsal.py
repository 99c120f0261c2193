"""The rehearsal (``rehearsal: true``; docs/scales.md): the active scale's DAG, job for job, on a slice a CPU runs.

``snakemake --cores 2 --config scale=paper rehearsal=true`` plans the paper DAG (same rules, run names, tables,
figures) on the configuration :func:`rehearsal_overlay` returns: outputs under ``<results_dir>/rehearsal`` and
``<data_dir>/rehearsal``, the data read through ``paper_data`` from a REFER copy the DAG makes itself
(:func:`rehearsal_copy`, rule ``rehearsal_data``, :mod:`ris.data.fake_refer`), and ``rehearsal_slice`` over the
preset (two optimizer steps on the CPU, the preset's ``evaluate`` settings on the CPU). The Snakefile applies it
right after :func:`ris.config.validate`; the rules read it as any configuration.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ris.config import ConfigError, all_runs, preset, rehearsing
from ris.options import TRAIN_OPTIONS, OptionError, resolve

__all__ = ["REHEARSAL_DIR", "check_rehearsal", "rehearsal_copy", "rehearsal_mem_mb", "rehearsal_note",
           "rehearsal_overlay", "rehearsing"]  # fmt: skip

#: The sub-folder of ``results_dir`` and ``data_dir`` a rehearsal writes to: its outputs never mix with a real run's.
REHEARSAL_DIR = "rehearsal"


def check_rehearsal(config: dict, source: str = "config.yaml") -> None:
    """``rehearsal: true`` needs ``rehearsal_slice`` (its train keys declared ones) and a grid trained on REFER
    datasets (the copy's); nothing to check otherwise."""
    if not rehearsing(config):
        return
    if not config.get("rehearsal_slice"):
        raise ConfigError(f"{source}: field rehearsal_slice: required with rehearsal: true")
    where = f"{source}: field rehearsal_slice.train"
    try:
        resolve(config["rehearsal_slice"]["train"], TRAIN_OPTIONS, where, partial=True)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    sources = {config["datasets"][k.dataset]["source"] for k in all_runs(config)}
    if "refer" not in sources:
        raise ConfigError(
            f"{source}: field rehearsal: true rehearses a scale that trains on the REFER datasets (e.g. "
            f"--config scale=paper rehearsal=true); scale {config['scale']!r} trains on {', '.join(sorted(sources))}"
        )


def rehearsal_copy(config: dict) -> dict[str, str]:
    """Where the rehearsal's DAG writes its REFER copy (rule ``rehearsal_data``), as ``paper_data`` names a user's
    own copy: ``refer_root`` (refcoco/, refcoco+/, refcocog/) and ``coco_images`` (COCO_train2014_*.jpg)."""
    root = Path(config["data_dir"]) / "user_copy"
    return {"refer_root": str(root / "refer"), "coco_images": str(root / "train2014")}


def rehearsal_overlay(config: dict, source: str = "config.yaml") -> dict:
    """The configuration a rehearsal runs, from a validated one with ``rehearsal: true`` (checked here,
    :func:`check_rehearsal`); ``config`` with ``rehearsal: false`` otherwise.

    The active preset's DAG unchanged (datasets, tables, runs, seeds, rules) on a slice: outputs under
    ``<results_dir>/rehearsal`` and ``<data_dir>/rehearsal``, the data read through ``paper_data`` from the copy the
    DAG makes (:func:`rehearsal_copy`), ``rehearsal_slice.train`` over the preset's and every method's ``train``
    (few steps, small batch, the CPU), ``rehearsal_slice.evaluate`` over its ``evaluate`` (the device, threads,
    loader workers), ``rehearsal_slice.threads`` over its ``threads``. Every other setting of the preset (model
    size, options, optimizer, micro-batch, image size, precision of evaluation) is the preset's own.
    """
    if not rehearsing(config):
        return {**config, "rehearsal": False}
    check_rehearsal(config, source)
    out = copy.deepcopy(config)
    out["rehearsal"] = True
    cut = out["rehearsal_slice"]
    out["results_dir"] = str(Path(config["results_dir"]) / REHEARSAL_DIR)
    out["data_dir"] = str(Path(config["data_dir"]) / REHEARSAL_DIR)
    out["paper_data"] = rehearsal_copy(out)
    p = preset(out)
    p["train"].update(cut.get("train", {}))
    p["evaluate"] = {**p.get("evaluate", {}), **cut.get("evaluate", {})}
    if "threads" in cut:
        p["threads"] = cut["threads"]
    for method in out["methods"].values():
        if "train" in method:
            method["train"].update(cut.get("train", {}))
    return out


def rehearsal_mem_mb(config: dict, rule: str) -> dict[str, int]:
    """``{"mem_mb": N}`` of a rule's jobs in a rehearsal (``rehearsal_slice.mem_mb``), else ``{}`` (the profile's)."""
    mem = (config.get("rehearsal_slice") or {}).get("mem_mb", {}) if rehearsing(config) else {}
    return {"mem_mb": int(mem[rule])} if rule in mem else {}


def rehearsal_note(config: dict) -> str:
    """The caption sentence of a rehearsal's tables: their numbers measure nothing."""
    if not rehearsing(config):
        return ""
    return (
        "REHEARSAL: every job of this scale ran on a slice (a generated REFER copy, a few optimizer steps, "
        "random weights where the hub was unreachable): the reproduced numbers measure nothing."
    )
