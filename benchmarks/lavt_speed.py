"""Speed of our paper-size LAVT (Swin-B window 12 + PWAMs + gates + decoder, BERT excluded), beside the official code.

Usage: python benchmarks/lavt_speed.py [--threads 2] [--repeats 3] [--batches 1] [--train-batch 4]
       [--image 480] [--profile 10] [--option channels_last_fusion ...]

``RISModel.forward_words`` on random word features (20 slots, 12 real), random weights (the time does not
depend on them), eval mode: forward without grad, and forward + backward of the mask loss. On the CPU fp32;
on CUDA bf16 autocast and channels_last, with images/s and ``torch.cuda.max_memory_allocated``. Reports the
best of ``--repeats`` runs after one warm-up, wall and CPU seconds (``time.process_time``: all threads of
the process, the work itself on a shared machine). ``--profile N`` also prints ``torch.profiler``'s top N
ops (self CPU time) of one forward + backward. Prints the machine and one Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ris.models import ModelConfig, RISModel, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import machine, markdown  # noqa: E402  (a sibling script, not a package)

#: The official code (yz93/LAVT-RIS) measured on the same 2-CPU machine, 2 threads, batch 1, 480 px, BERT
#: excluded, best of 2-3 runs (issue 11).
OFFICIAL_S = {"forward": 2.29, "forward+backward": 8.33}
WORDS, REAL_WORDS = 20, 12


def build(image: int, options: dict[str, Any]) -> RISModel:
    """The paper-size LAVT (Swin-B full, random init: nothing is downloaded) with speed ``options``."""
    torch.manual_seed(0)
    return build_model(ModelConfig(method="lavt", size="full", image_size=image, options=options)).eval()


def inputs(batch: int, image: int, dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Images, word features (B, 20, dim) with 12 real words, their mask, a 0/1 target."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image, image, generator=g)
    words = torch.randn(batch, WORDS, dim, generator=g)
    mask = torch.zeros(batch, WORDS, dtype=torch.long)
    mask[:, :REAL_WORDS] = 1
    target = (torch.rand(batch, image, image, generator=g) > 0.5).float()
    return tuple(t.to(device) for t in (images, words, mask, target))


def step_fn(model: RISModel, batch: tuple[torch.Tensor, ...], backward: bool, device: torch.device) -> Callable:
    """One forward (no grad) or forward + backward (loss, grads set to None after) as a closure."""
    images, words, mask, target = batch
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def run() -> None:
        if backward:
            with amp:
                out = model.forward_words(images, words, mask)
            model.mask_loss(out["logits"].float(), target).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), amp:
                model.forward_words(images, words, mask)

    return run


def timed(fn: Callable, repeats: int, device: torch.device) -> dict[str, float]:
    """Best wall and CPU seconds of ``repeats`` calls after one warm-up (CUDA: synchronised, peak memory)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    res = {"wall": min(walls), "cpu": min(cpus)}
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def profile(fn: Callable, top: int) -> str:
    """``torch.profiler``'s top ops by self CPU time of one call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    fn()
    with prof(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes of the forward/backward rows")
    ap.add_argument("--train-batch", type=int, default=4, help="extra forward+backward row at this batch; 0: none")
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--profile", type=int, default=0, help="print the top N ops of one forward+backward")
    ap.add_argument(
        "--option", action="append", default=[], help="a model option to switch on, e.g. channels_last_fusion"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    options = dict.fromkeys(a.option, True)
    model = build(a.image, options).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    print(machine(device))
    params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.text.parameters())
    print(f"parameters without BERT: {params:,}; options switched on: {', '.join(a.option) or 'none'}")
    rows: list[list[Any]] = []
    plan = [(b, False) for b in a.batches] + [(b, True) for b in a.batches]
    if a.train_batch and a.train_batch not in a.batches:
        plan.append((a.train_batch, True))
    for b, backward in plan:
        fn = step_fn(model, inputs(b, a.image, model.text.dim, device), backward, device)
        r = timed(fn, a.repeats, device)
        kind = "forward+backward" if backward else "forward"
        ref = OFFICIAL_S.get(kind) if b == 1 and a.image == 480 else None
        rows.append(
            [
                kind,
                b,
                f"{r['wall']:.2f}",
                f"{r['cpu']:.2f}",
                f"{b / r['wall']:.2f}",
                f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-",
                f"{ref:.2f}" if ref else "-",
                f"{r['wall'] / ref:.2f}x" if ref else "-",
            ]
        )
        print(rows[-1], flush=True)
    header = ["pass", "batch", "wall (s)", "CPU (s)", "images/s", "peak GiB", "official (s)", "ours/official"]
    print(markdown(header, rows))
    if a.profile:
        print(profile(step_fn(model, inputs(1, a.image, model.text.dim, device), True, device), a.profile))


if __name__ == "__main__":
    main()
