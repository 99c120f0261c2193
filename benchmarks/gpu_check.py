"""One-command check of the GPU path: paper LAVT training steps, evaluation rate and bf16 accuracy, in minutes.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.gpu_check --out gpu_check.json      # <= 5 min on one GPU; ~1-2 min on a CPU

Rows (one Markdown table, also written as JSON with ``--out``):

- ``train``: a training step of our paper-preset LAVT (Swin-B, 480 px, BERT-base, LAVT's official AdamW
  groups; :func:`paper_memory.ours_step`) at micro-batch 4 and 8, with and without the model option
  ``activation_checkpointing``: s/step (best of the timed steps after warm-up), images/s and the peak
  memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak RSS of a fresh process). On CUDA under
  bf16 autocast with channels_last, as ``ris train`` runs the paper preset.
- ``evaluate``: samples/s of ``ris evaluate``'s loop (:func:`ris.evaluation.inference.run_inference`:
  ``model.predict``, IoU, RLE encoding of the masks) at batch 1 and 16, the paper scale's precision (bf16
  on CUDA), on in-memory inputs (the job's DataLoader workers decode the JPEGs beside it).
- ``bf16``: the official-code reference (``tests/fixtures/lavt_reference``: a small LAVT's official
  checkpoint and outputs) run in fp32 and under bf16 autocast on the device: max abs difference of the
  1/4-size scores between the two, fp32's difference to the official outputs, and the share of final
  mask pixels whose class changes.

Without CUDA it says so, runs the CPU rows (smaller: micro-batch 1, evaluation batches 1 and 2, 224 px;
fp32 training and evaluation, bf16 autocast on the CPU for the ``bf16`` row) and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_utils import REPO, machine, markdown, paper_model_config
from benchmarks.paper_memory import batch_inputs, measure, run_fresh
from ris.utils import write_json

#: Where the official-code reference fixture is looked for: the tests' copy (tests/fixtures/README.md).
REFERENCE_DIRS = (REPO / "tests" / "fixtures" / "lavt_reference",)
GPU_DEFAULTS = {"image": 480, "micro_batches": [4, 8], "eval_batches": [1, 16], "steps": 4, "eval_samples": 128}
CPU_DEFAULTS = {"image": 224, "micro_batches": [1], "eval_batches": [1, 2], "steps": 2, "eval_samples": 4}


def train_rows(a: argparse.Namespace, device: torch.device, precision: str) -> list[dict[str, Any]]:
    """Training steps at each micro-batch, without and with activation checkpointing."""
    rows = []
    for micro in a.micro_batches:
        for impl in ("ours", "ours+ckpt"):
            conf = {"impl": impl, "micro": micro, "device": device.type, "precision": precision, "image": a.image,
                    "size": a.size, "threads": torch.get_num_threads(), "steps": a.steps, "official": None}  # fmt: skip
            if device.type == "cuda":  # in this process: the peak is reset per configuration
                try:
                    r = measure(conf)
                except torch.OutOfMemoryError as e:
                    r = {**conf, "error": f"out of memory: {str(e).splitlines()[0]}"[:200]}
                gc.collect()
                torch.cuda.empty_cache()
            else:  # a fresh process each: its peak RSS is this configuration's
                r = run_fresh(conf)
            row = {"check": "train", "batch": micro, "checkpointing": impl == "ours+ckpt", "device": device.type,
                   "precision": precision}  # fmt: skip
            if "error" in r:
                row["error"] = r["error"]
            else:
                row.update(seconds=r["step_s"], per_s=r["images_per_s"], peak_gib=r["peak_gib"])
            rows.append(row)
            print(f"# {row}", flush=True)
    return rows


def eval_rows(a: argparse.Namespace, device: torch.device, precision: str) -> list[dict[str, Any]]:
    """Samples/s of the evaluation loop at each batch size (paper-preset LAVT, eval mode)."""
    from ris.evaluation.inference import run_inference
    from ris.models import build_model

    torch.manual_seed(0)
    cfg = paper_model_config("lavt", "swin_b", a.image)
    cfg.size = a.size
    model = build_model(cfg).to(device).eval()
    rows = []
    for b in a.eval_batches:
        x = batch_inputs(b, a.image, device, channels_last=False)
        batch = {"image": x["images"], "target": x["target"] > 0, "input_ids": x["ids"],
                 "attention_mask": x["mask"], "row": torch.arange(b)}  # fmt: skip
        n = max(1, a.eval_samples // b)
        run_inference(model, [batch], device, masks_out=[], precision=precision)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        run_inference(model, [batch] * n, device, masks_out=[], precision=precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t
        row = {"check": "evaluate", "batch": b, "checkpointing": False, "device": device.type,
               "precision": precision, "seconds": wall / n, "per_s": n * b / wall}  # fmt: skip
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        print(f"# {row}", flush=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bf16_row(reference: Path | None, device: torch.device) -> dict[str, Any]:
    """The reference LAVT in fp32 and under bf16 autocast on ``device``: how far bf16 moves the scores."""
    row: dict[str, Any] = {"check": "bf16", "batch": 2, "checkpointing": False, "device": device.type,
                           "precision": "bf16 vs fp32"}  # fmt: skip
    if reference is None:
        row["error"] = "fixture lavt_reference not found (looked in " + ", ".join(map(str, REFERENCE_DIRS)) + ")"
        return row
    from ris.interop.lavt import load_official

    ref = torch.load(reference / "io.pt", weights_only=True)
    model = load_official(reference / "checkpoint.pth").to(device).eval()
    image, words, mask = ref["image"].to(device), ref["l_feats"].transpose(1, 2).to(device), ref["l_mask"].squeeze(-1)
    scores = {}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                scores[precision] = model.forward_words(image, words, mask.to(device))["scores"].float().cpu()
    size = tuple(ref["final_argmax"].shape[-2:])
    final = {k: torch.nn.functional.interpolate(v, size=size, mode="bilinear", align_corners=True).argmax(1)
             for k, v in scores.items()}  # fmt: skip
    row["value"] = (scores["bf16"] - scores["fp32"]).abs().max().item()
    row["fp32_vs_official"] = (scores["fp32"] - ref["scores_quarter"]).abs().max().item()
    row["mask_pixels_changed"] = (final["bf16"] != final["fp32"]).float().mean().item()
    print(f"# {row}", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table."""
    header = ["check", "batch", "checkpointing", "device", "precision", "s/step or s/batch", "images/s or samples/s",
              "peak GiB", "max abs diff (bf16 vs fp32)", "note"]  # fmt: skip

    def f(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    body = []
    for r in rows:
        note = r.get("error", "")
        if r["check"] == "bf16" and "error" not in r:
            note = f"fp32 vs official {r['fp32_vs_official']:.1e}; mask pixels changed {r['mask_pixels_changed']:.2%}"
        body.append([r["check"], r["batch"], "on" if r["checkpointing"] else "off", r["device"], r["precision"],
                     f(r.get("seconds"), ".3g"), f(r.get("per_s"), ".3g"), f(r.get("peak_gib"), ".2f"),
                     f(r.get("value"), ".2e"), note])  # fmt: skip
    return markdown(header, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--image", type=int, default=None, help="image size (GPU 480, CPU 224)")
    ap.add_argument("--micro-batches", type=int, nargs="+", default=None, help="training (GPU 4 8, CPU 1)")
    ap.add_argument("--eval-batches", type=int, nargs="+", default=None, help="evaluation (GPU 1 16, CPU 1 2)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per row, the first untimed (GPU 4)")
    ap.add_argument("--eval-samples", type=int, default=None, help="timed evaluation samples per batch size")
    ap.add_argument("--size", default="full", help="full (paper networks) | tiny (a quick check of this script)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--reference", type=Path, default=None, help="the lavt_reference fixture folder")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))  # fmt: skip
    cuda = device.type == "cuda"
    for k, v in (GPU_DEFAULTS if cuda else CPU_DEFAULTS).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    precision = "bf16" if cuda else "fp32"  # the paper preset's: bf16 autocast on CUDA, fp32 on the CPU
    if not cuda:
        print("# no CUDA device: CPU rows only (smaller settings; the GPU rows need a GPU)", flush=True)
    print(f"# gpu_check on {device.type}: {machine(device)}", flush=True)
    reference = a.reference or next((d for d in REFERENCE_DIRS if (d / "io.pt").is_file()), None)
    rows = train_rows(a, device, precision) + eval_rows(a, device, precision) + [bf16_row(reference, device)]
    elapsed = time.perf_counter() - start
    print()
    print(table(rows))
    print(f"\n{elapsed:.0f} s in all")
    if a.out:
        write_json(a.out, {"machine": machine(device), "cuda": cuda, "image": a.image, "size": a.size,
                           "elapsed_s": elapsed, "rows": rows})  # fmt: skip
        print(f"written: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
