"""Evaluation throughput at paper size: samples/s of ``ris evaluate``'s loop with a paper-size model at 480 px.

The loop is the real one (:func:`ris.evaluation.inference.run_inference`: ``ReferSplit`` items through a
DataLoader, ``model.predict``, per-sample intersection/union, predictions encoded as RLE) over a prepared
split generated as in ``benchmarks/data_path.py`` (COCO-like JPEGs, ``ris prepare``). The model is the paper
preset's (LAVT with Swin-B and BERT-base by default), random init: the cost is the same as trained weights.

Defaults: the CPU, one thread, batch 16, fp32 (the demo scale's ``evaluate:`` settings). ``--device cuda``
(or ``auto`` on a GPU machine) times the same loop on the GPU (``--precision bf16``: the autocast of
``run_inference``, as the paper scale's evaluate jobs run it). Prints samples/s, seconds per sample and,
from them, the hours one RefCOCO val split (10,834 sentences, the largest evaluated split) takes, beside
the rate config.yaml's paper scale sizes its evaluate jobs with (``scales.paper.evaluate.samples_per_s``,
an estimate until a GPU measures it: replace it with this script's rate, or gpu_check.py's).

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.eval_throughput --samples 8 --batch 4   # minutes on a CPU
    .venv/bin/python -m benchmarks.eval_throughput --device cuda --samples 512 --batch 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from benchmarks.bench_utils import REPO, machine, markdown, paper_model_config
from benchmarks.data_path import build_split, tokenizer
from ris.config import evaluate_settings, load_yaml
from ris.data.dataset import ReferSplit
from ris.data.tokenizer import build_vocab, load_tokenizer
from ris.evaluation.inference import run_inference
from ris.models import build_model

REFCOCO_VAL_SENTENCES = 10834  # RefCOCO (UNC) val: sentences = evaluation samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lavt")
    ap.add_argument("--backbone", default="swin_b")
    ap.add_argument("--num-masks", type=int, default=100, help="CoupAlign's N")
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--samples", type=int, default=8, help="evaluation samples timed (after one warm-up batch)")
    ap.add_argument("--batch", type=int, default=16, help="ris evaluate --batch-size (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the evaluate rule: 1)")
    ap.add_argument("--device", default="cpu", help="cpu (the evaluate rule) | cuda | auto")
    ap.add_argument("--precision", default="fp32", help="fp32 (the demo's) | bf16 (autocast, the paper's on CUDA)")
    a = ap.parse_args()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))  # fmt: skip
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"# evaluation at {a.image}x{a.image}, {a.method} {a.backbone} (paper size), batch {a.batch}, "
          f"{a.precision}, on {device.type}: {machine(device)}", flush=True)  # fmt: skip

    work = Path(tempfile.mkdtemp(prefix="ris_eval_bench_"))
    try:
        table, images_dir, _ = build_split(work, max(4, (a.samples + a.batch) // 6 + 2), seed=0)
        tok = tokenizer() or load_tokenizer(None, build_vocab(table["sentence"]))
        split = ReferSplit(table, images_dir, a.image, tok, 20)
        n = min(a.samples, len(split) - a.batch)
        n_masks = a.num_masks if a.method == "coupalign" else 0
        model = build_model(paper_model_config(a.method, a.backbone, a.image, n_masks)).to(device)
        warm = DataLoader(Subset(split, range(a.batch)), batch_size=a.batch)
        timed = DataLoader(Subset(split, range(a.batch, a.batch + n)), batch_size=a.batch)
        run_inference(model, warm, device, masks_out=[], precision=a.precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t, cpu = time.perf_counter(), time.process_time()
        inter, _, _ = run_inference(model, timed, device, masks_out=[], precision=a.precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        assert len(inter) == n
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = n / wall
    hours = REFCOCO_VAL_SENTENCES / rate / 3600
    # On the CPU, CPU seconds per sample / threads: the rate on dedicated cores, whatever else runs here.
    cpu_rate = n / (cpu / a.threads) if device.type == "cpu" else rate
    cpu_hours = REFCOCO_VAL_SENTENCES / cpu_rate / 3600
    config = load_yaml(REPO / "config.yaml")
    config["scale"] = "paper"
    sized = float(evaluate_settings(config)["samples_per_s"])  # the rate paper evaluate jobs are sized with
    print()
    print(markdown(
        ["model", "device", "threads", "batch", "samples", "samples/s (wall)", "s/sample (wall)",
         "s/sample (CPU / threads)", "RefCOCO val (h, wall / CPU)", f"/ config's paper rate ({sized:g}/s)"],
        [[f"{a.method} {a.backbone}", device.type + ("" if device.type == "cpu" else f" {a.precision}"),
          torch.get_num_threads(), a.batch, n, f"{rate:.3g}", f"{1 / rate:.3g}", f"{1 / cpu_rate:.3g}",
          f"{hours:.1f} / {cpu_hours:.1f}", f"{rate / sized:.2f}x"]],
    ))  # fmt: skip
    print(f"\nload average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
