"""Sub-commands of the evaluation stage (``workflow/rules/evaluate.smk``): evaluate, baselines, and predict
(one image and sentence, for a person)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ris.cli.common import Subparsers, set_threads


def add_evaluate(sub: Subparsers) -> None:
    s = sub.add_parser("evaluate", help="evaluate a checkpoint on prepared splits")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--prepared", required=True, help="folder of the prepared <split>.parquet tables")
    s.add_argument("--splits", required=True, nargs="+", help="splits to evaluate, e.g. val testA testB")
    s.add_argument("--images", required=True)
    s.add_argument("--out", required=True, help="folder for <split>/metrics.json and <split>/samples.csv")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="cpu", help="cpu | cuda (the scale's evaluate.device in config.yaml)")
    s.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast) | auto (bf16 on CUDA, else fp32)")
    s.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (0: none)")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.add_argument("--no-mlflow", action="store_true")
    s.set_defaults(fn=_evaluate)


def _evaluate(a: argparse.Namespace) -> None:
    from ris.evaluation.inference import evaluate_splits

    set_threads(a.threads)
    results = evaluate_splits(
        Path(a.checkpoint),
        Path(a.prepared),
        a.splits,
        Path(a.images),
        Path(a.out),
        batch_size=a.batch_size,
        device=a.device,
        log_mlflow=not a.no_mlflow,
        precision=a.precision,
        num_workers=a.workers,
    )
    print(json.dumps({split: r["metrics"] for split, r in results.items()}, indent=2))


def add_baselines(sub: Subparsers) -> None:
    s = sub.add_parser("baselines", help="score trivial baselines (all foreground, random/largest object) on a split")
    s.add_argument("--split-table", required=True, help="prepared <split>.parquet")
    s.add_argument("--instances", required=True, help="instances.json of the dataset (the objects of each image)")
    s.add_argument("--size", type=int, required=True, help="evaluation size (the runs' image_size)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--out-dir", required=True, help="one <baseline>/metrics.json and samples.csv per baseline")
    s.add_argument(
        "--names", nargs="+", default=None, help="baselines to score (default: all of ris.evaluation.baselines)"
    )
    s.set_defaults(fn=_baselines)


def _baselines(a: argparse.Namespace) -> None:
    from ris.evaluation.baselines import BASELINES, evaluate_baselines

    names = tuple(a.names) if a.names else BASELINES
    table, instances, out = Path(a.split_table), Path(a.instances), Path(a.out_dir)
    results = evaluate_baselines(table, instances, a.size, a.dataset, a.split, out, names)
    print(json.dumps({k: v["metrics"] for k, v in results.items()}, indent=2))


def add_predict(sub: Subparsers) -> None:
    s = sub.add_parser("predict", help="mask of what a sentence refers to in an image (mask PNG + overlay PNG)")
    s.add_argument("--checkpoint", required=True, help="a ris checkpoint, e.g. results/runs/<dataset>/<run>/model.pt")
    s.add_argument("--image", required=True, help="an image file (PNG, JPEG, ...)")
    s.add_argument("--sentence", required=True, help="the referring expression")
    s.add_argument("--out-mask", default="", help="mask PNG (default: <image>.mask.png)")
    s.add_argument("--out-overlay", default="", help="overlay PNG (default: <mask stem>.overlay.png)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=_predict)


def _predict(a: argparse.Namespace) -> None:
    from ris.evaluation.predict import predict, save_prediction

    set_threads(a.threads)
    out_mask = Path(a.out_mask) if a.out_mask else Path(a.image).with_suffix(".mask.png")
    out_overlay = Path(a.out_overlay) if a.out_overlay else out_mask.with_name(out_mask.stem + ".overlay.png")
    pred = predict(Path(a.checkpoint), Path(a.image), a.sentence, device=a.device)
    print(json.dumps(save_prediction(pred, out_mask, out_overlay), indent=2))


COMMANDS = (add_evaluate, add_baselines, add_predict)
