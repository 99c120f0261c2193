"""Which training makes N masks N hypotheses? Demo runs of CoupAlign (or EAVL, JMCELN) side by side over seeds.

Each variant is a set of model options laid over the demo's run configuration (``config.yaml``, the same
``ris.config.run_config`` the DAG uses); every (variant, seed) is trained with ``ris train`` and evaluated on
val with ``ris evaluate``, which also writes the mask diagnostics. Prints one Markdown row per variant: val
mIoU and RefAcc (mean +- std over seeds, and per seed), distinct masks, weight entropy, top-mask hit, object
recall and query cosine (means). The measurements in docs/masks.md were made this way.

Run (from the repository root, after ``snakemake --cores 2 data/prepared/synthetic data/text_features/synthetic.pt
results/pretrained/swin_b.pt results/mlflow_ready.json``: the demo's data, text features and pretrained backbone)::

    python -m benchmarks.mask_variants --variants collapsed gate chosen --seeds 0 1 2 --parallel 2
    python -m benchmarks.mask_variants --method eavl --num-masks 0 --variants eavl_single eavl_chosen
    python -m benchmarks.mask_variants --method jmceln --num-masks 0 --variants jmceln_chosen --epochs 15

Runs go to ``--out`` (default ``results/mask_variants/``); a finished (variant, seed) is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ris.config import RunKey, load_yaml, run_config

#: name -> model options over the demo preset (the shipped defaults are ``chosen``).
VARIANTS: dict[str, dict[str, Any]] = {
    # CoupAlign as it was: one loss on the weighted sum of the masks (they collapse into one)
    "collapsed": {"proposal_weight": 0.0, "selection_weight": 0.0, "sma_score": "query", "word_gate": False,
                  "aux_weight": 0.1},
    "gate": {"proposal_weight": 0.0, "selection_weight": 0.0, "sma_score": "query", "word_gate": True,
             "aux_weight": 0.1},
    "proposals_only": {"selection_weight": 0.0, "sma_score": "query", "word_gate": False, "aux_weight": 0.1},
    "query_score": {"sma_score": "query", "aux_weight": 0.1},
    "pixels_aux01": {"aux_weight": 0.1},
    "selection03": {"selection_weight": 0.3},
    "proposal2": {"proposal_weight": 2.0},
    "chosen": {},
    "eavl_single": {"proposal_weight": 0.0, "selection_weight": 0.0, "estimator": "query", "aux_weight": 0.0},
    "eavl_query_estimator": {"estimator": "query", "aux_weight": 0.0},
    "eavl_chosen": {},
    "jmceln_single": {"proposal_weight": 0.0, "selection_weight": 0.0, "aux_weight": 0.0},
    "jmceln_chosen": {},
}  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


def run_one(a: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    """Train and evaluate one (variant, seed), or read its result when it is already there."""
    epochs = f"-e{a.epochs}" if a.epochs else ""
    out = Path(a.out) / f"{a.method}-n{a.num_masks}-{variant}{epochs}-s{seed}"
    result_path = out / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    config = load_yaml(REPO / "config.yaml")
    cfg = run_config(config, RunKey("synthetic", a.method, a.backbone, a.num_masks, seed))
    cfg["model"]["options"].update(VARIANTS[variant])
    if a.epochs:
        cfg["train"]["epochs"] = a.epochs
    cfg["run"] = f"mask_variants/{out.name}"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / "log.txt", "w") as log:
        for cmd in (
            ["train", "--run-config", json.dumps(cfg), "--out", str(out), "--threads", "1"],
            ["evaluate", "--checkpoint", str(out / "model.pt"), "--prepared", cfg["data"]["prepared_dir"],
             "--splits", "val", "--images", cfg["data"]["images_dir"], "--out", str(out / "eval"), "--threads", "1"],
        ):  # fmt: skip
            subprocess.run([sys.executable, "-m", "ris", *cmd], check=True, env=env, stdout=log, stderr=log)
    metrics = json.loads((out / "eval" / "val" / "metrics.json").read_text())["metrics"]
    diag_file = out / "eval" / "val" / "mask_diagnostics.json"
    diag = json.loads(diag_file.read_text())["metrics"] if diag_file.is_file() else {}
    result = {"variant": variant, "seed": seed, "mIoU": metrics["mIoU"], "RefAcc": metrics["RefAcc"], **diag}
    result_path.write_text(json.dumps(result, indent=1))
    return result


def row(variant: str, results: list[dict[str, Any]]) -> str:
    """One Markdown row: mean +- std over seeds (and per seed) of mIoU and RefAcc, means of the diagnostics."""

    def stat(key: str) -> str:
        v = np.array([r[key] for r in results])
        return f"{v.mean():.1f} +- {v.std():.1f} ({' / '.join(f'{x:.1f}' for x in v)})"

    def mean(key: str) -> str:
        v = [r[key] for r in results if key in r]
        return f"{np.mean(v):.2f}" if v else "-"

    diags = ("distinct_masks", "weight_entropy", "top_mask_hit", "object_recall", "query_cosine")
    return f"| {variant} | {len(results)} | {stat('mIoU')} | {stat('RefAcc')} | " + " | ".join(map(mean, diags)) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="coupalign")
    ap.add_argument("--backbone", default="swin_b")
    ap.add_argument("--num-masks", type=int, default=100)
    ap.add_argument("--variants", nargs="+", default=["collapsed", "chosen"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="train.epochs instead of the demo preset's")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each)")
    ap.add_argument("--out", default="results/mask_variants")
    a = ap.parse_args()
    jobs = [(v, s) for v in a.variants for s in a.seeds]
    with ThreadPoolExecutor(a.parallel) as pool:
        results = list(pool.map(lambda j: run_one(a, *j), jobs))
    epochs = f", {a.epochs} epochs" if a.epochs else ""
    print(f"{a.method} {a.backbone} N = {a.num_masks}, demo preset{epochs}, val (seeds {a.seeds})\n")
    print("| variant | seeds | mIoU | RefAcc | distinct masks | weight entropy | top-mask hit | object recall | "
          "query cosine |\n|---|---:|---|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for v in a.variants:
        print(row(v, [r for r in results if r["variant"] == v]))


if __name__ == "__main__":
    main()
