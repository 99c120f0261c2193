"""Inference of a trained run on its splits: per-sample IoUs, predicted masks, the files of each split.

``evaluate_splits`` writes, per split, ``metrics.json`` (oIoU, mIoU, P@0.5..0.9, sample and ref counts, protocol)
and ``samples.csv`` (one row per (ref, sentence) sample: ids, sentence, intersection, union, IoU and the
predicted mask as a compressed COCO RLE string at the evaluation resolution ``pred_size`` x ``pred_size``,
so figures can show any sample's prediction without re-running the model: a 128 px mask is ~50 bytes,
a 480 px one a few hundred), and logs the splits' metrics into the run's MLflow run when the checkpoint
knows it.

Devices: one path for the CPU and the GPU. ``device`` and ``precision`` come from the scale's ``evaluate:``
section of config.yaml (paper: ``cuda``, ``bf16``: the forward under bf16 autocast; demo: ``cpu``, ``fp32``);
:func:`inference_autocast` is the only switch, and it is off for fp32 (the CPU tests run the same loop).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ris.data.dataset import ReferSplit
from ris.data.prepare import read_instances, read_split
from ris.evaluation.mask_diagnostics import DIAGNOSTICS_FILE, MAX_SAMPLES, Diagnoser, write_mask_diagnostics
from ris.evaluation.results import encode_masks, write_results
from ris.metrics import IoUAccumulator
from ris.training.checkpoint import load_checkpoint, model_from_checkpoint

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_inference_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; ``fp32`` and ``bf16`` (also on the CPU) stay as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"evaluation precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def inference_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward's autocast: bf16 when ``precision`` (resolved) says so, else disabled (fp32)."""
    bf16 = resolve_inference_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def run_inference(
    model,
    loader: DataLoader,
    device: torch.device,
    progress: bool = False,
    desc: str = "eval",
    masks_out: list[str] | None = None,
    precision: str = "fp32",
    diagnoser: Diagnoser | None = None,
):
    """(per-sample intersection, union, dataset row index) over a loader.

    With ``masks_out`` (a list), the predicted masks are appended to it as RLE strings, in sample order.
    With a ``diagnoser``, each batch's forward outputs are shown to it (a multi-mask model's N masks, diagnosed
    from this same pass).
    ``precision`` bf16 runs the forward under bf16 autocast (see :func:`inference_autocast`); the masks are
    thresholded logits either way.
    """
    model.eval()
    acc = IoUAccumulator()
    rows = []
    non_blocking = device.type == "cuda"
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = batch["image"].to(device, non_blocking=non_blocking)
        target = batch["target"].to(device, non_blocking=non_blocking)
        inputs = (
            images,
            batch["input_ids"].to(device, non_blocking=non_blocking),
            batch["attention_mask"].to(device, non_blocking=non_blocking),
            tuple(target.shape[-2:]),
        )
        with inference_autocast(device, precision):
            if diagnoser is None:
                pred = model.predict(*inputs)
            else:
                pred, out = model.predict_outputs(*inputs)
                diagnoser.update(batch, out)
        acc.update(pred, target)
        if masks_out is not None:
            masks_out.extend(encode_masks(pred))
        rows.append(batch["row"].numpy())
    inter, union = acc.arrays()
    return inter, union, np.concatenate(rows) if rows else np.zeros(0, np.int64)


def evaluate_splits(
    checkpoint: Path,
    prepared_dir: Path,
    splits: list[str],
    images_dir: Path,
    out_dir: Path,
    batch_size: int = 16,
    device: str = "cpu",
    log_mlflow: bool = True,
    precision: str = "fp32",
    num_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """Evaluate a checkpoint on prepared splits (``<prepared_dir>/<split>.parquet``); write
    ``<out_dir>/<split>/metrics.json`` and ``samples.csv`` for each, and return their results by split.

    One process per run, not per split: the model, its text encoder (and the sentences of all the splits)
    and MLflow are set up once (each costs seconds; at demo scale more than the inference itself).
    ``precision``: fp32, bf16 (autocast) or auto (bf16 on CUDA); ``num_workers``: DataLoader processes that
    decode and resize the images while the GPU runs the model (0: in this process).
    """
    missing = [s for s in splits if not (Path(prepared_dir) / f"{s}.parquet").is_file()]
    if missing:  # before any work
        names = ", ".join(f"{s}.parquet" for s in missing)
        raise FileNotFoundError(f"{prepared_dir}: no prepared table {names} (splits {' '.join(splits)})")
    ckpt = load_checkpoint(checkpoint)
    model, tokenizer, config = model_from_checkpoint(ckpt)
    dev = torch.device(device)
    precision = resolve_inference_precision(precision, dev)
    model.to(dev)
    size, max_tokens = int(config["model"]["image_size"]), int(config["train"]["max_tokens"])
    tables = {split: read_split(Path(prepared_dir) / f"{split}.parquet") for split in splits}
    datasets = {s: ReferSplit(t, Path(images_dir), size, tokenizer, max_tokens, train=False) for s, t in tables.items()}
    model.text.cache_sentences(
        torch.cat([ds.input_ids for ds in datasets.values()]),
        torch.cat([ds.attention for ds in datasets.values()]),
        config.get("data", {}).get("text_features"),
    )
    header = {
        "run": config["run"],
        "dataset": config["dataset"],
        "method": config["model"]["method"],
        "backbone": config["model"]["backbone"],
        "num_masks": int(config["model"]["num_masks"]),
        "seed": int(config["seed"]),
        "epoch": int(ckpt.get("epoch", -1)),
    }
    # Are a multi-mask model's N masks N hypotheses? Diagnosed on val (else the first split) from the same
    # inference pass (ris/evaluation/mask_diagnostics.py), with the images' objects attached to the items it
    # reads: the first MAX_SAMPLES, rounded up to whole batches so that no batch mixes items with and without.
    diagnosed = ("val" if "val" in datasets else splits[0]) if model.has_mask_hypotheses else None
    if diagnosed is not None:
        first = math.ceil(MAX_SAMPLES / batch_size) * batch_size
        datasets[diagnosed].attach_instances(read_instances(Path(prepared_dir)), first=first)
    results, diagnostics = {}, None
    for split, ds in datasets.items():
        loader = DataLoader(
            ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=dev.type == "cuda"
        )
        masks: list[str] = []
        diagnoser = Diagnoser() if split == diagnosed else None
        inter, union, rows = run_inference(
            model, loader, dev, progress=True, desc=f"evaluate {split}", masks_out=masks, precision=precision,
            diagnoser=diagnoser,
        )  # fmt: skip
        results[split] = write_results(
            Path(out_dir) / split, {**header, "split": split}, tables[split], rows, inter, union, masks, size
        )
        if diagnoser is not None:
            header_d = {**header, "split": split, "image_size": size}
            diagnostics = write_mask_diagnostics(Path(out_dir) / split / DIAGNOSTICS_FILE, header_d, diagnoser)
    run_id = ckpt.get("mlflow_run_id")
    if log_mlflow and run_id:
        from ris.training.tracking import Tracker

        tracker = Tracker(config["tracking"]["uri"], config["tracking"]["experiment"], run_id=run_id)
        for split, result in results.items():
            tracker.log_metrics({f"{split}/{k}": v for k, v in result["metrics"].items() if not np.isnan(v)})
            tracker.log_artifact(Path(out_dir) / split / "metrics.json", artifact_path=f"eval/{split}")
        if diagnostics is not None:
            split = diagnostics["split"]
            tracker.log_metrics({f"{split}/masks_{k}": v for k, v in diagnostics["metrics"].items()})
        tracker.finish()
    return results
