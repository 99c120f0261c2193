"""Training step time and peak memory of every method x backbone, at demo (tiny) or paper size.

Usage (from the repository root)::

    python -m benchmarks.step_time [--image 128] [--batch 8] [--threads 1] [--steps 5]   # demo size
    python -m benchmarks.step_time --paper [--methods lavt] [--backbones swin_b] [--batch 2]

``--paper``: the paper preset's networks (full-size backbone and BERT-base, random init: nothing is
downloaded and a step costs the same), 480x480, 20 tokens, batch 2 (``--batch``), each method's options
from ``config.yaml``, AdamW; on CUDA with the preset's bf16 autocast and channels_last, as ``ris train``
runs it (``--precision``, ``--channels-last`` override). AdamW's state is allocated before the first step
(a step on zero gradients), so every step sees the training peak; then ``--warmup`` untimed steps and
``--steps`` timed ones; the best is reported, in wall seconds and in CPU seconds of the process (all its
threads: on a shared machine the wall clock also counts the others' work, the CPU time does not).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` of the step; on the CPU each combination runs in
a fresh forked process whose peak RSS (``ru_maxrss``) is reported, with the RSS of the process before the
model was built shown beside it (Python, torch and the imports). Prints a Markdown table (and one JSON
line per combination with ``--json``). On a 2-core CPU a paper-size Swin-B step takes minutes: pick
combinations with ``--methods``/``--backbones``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import time
from typing import Any

import torch

from benchmarks.bench_utils import machine, markdown, paper_model_config
from ris.models import BACKBONES, METHODS, ModelConfig, build_model
from ris.models.losses import InstanceTargets


def model_config(a: argparse.Namespace, method: str, backbone: str) -> ModelConfig:
    """The model of one combination: the paper preset's (options from config.yaml), or a tiny demo-size one."""
    n = a.num_masks if method == "coupalign" else 0
    if not a.paper:
        return ModelConfig(method, backbone, image_size=a.image, vocab_size=60, num_masks=n)
    return paper_model_config(method, backbone, a.image, n)


def random_objects(batch: int, k: int, size: int, device: torch.device) -> InstanceTargets:
    """``k`` objects per image at half the input size, as training gives them (random rectangles, the first one
    referred to), for the models whose N masks learn the image's objects (``RISModel.uses_instances``)."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch, k, size, size, dtype=torch.uint8)
    for i in range(batch):
        for j in range(k):
            y, x = torch.randint(0, size - 4, (2,), generator=g).tolist()
            h, w = torch.randint(4, max(5, size // 3), (2,), generator=g).tolist()
            masks[i, j, y : y + h, x : x + w] = 1
    count = torch.full((batch,), k)
    return InstanceTargets(masks.to(device), count.to(device), torch.zeros(batch, dtype=torch.long, device=device))


def rss_gib() -> float:
    """Peak resident set size of this process so far, GiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def measure(a: argparse.Namespace, method: str, backbone: str, device: torch.device) -> dict[str, Any]:
    """Build one model and time ``1 + a.steps`` AdamW steps on random data; peak memory of the timed steps."""
    torch.manual_seed(0)
    base_rss = rss_gib()
    cfg = model_config(a, method, backbone)
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    b, size = a.batch, a.image
    x = torch.randn(b, 3, size, size, device=device)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ids = torch.randint(5, cfg.vocab_size, (b, a.tokens), device=device)
    am = torch.ones_like(ids)
    target = (torch.rand(b, size, size, device=device) > 0.9).to(torch.uint8)
    instances = random_objects(b, a.objects, size // 2, device) if model.uses_instances else None  # as training
    amp = a.precision != "fp32"
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float16
    for p in model.parameters():  # AdamW's state now, so that even the first measured step has the training peak
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(a.warmup + a.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t, c = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = model(x, ids, am)
            loss = (model.loss(out, target, instances) if instances else model.loss(out, target))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    step = min(times[a.warmup :])
    out = {
        "method": method, "backbone": backbone, "num_masks": cfg.num_masks, "size": cfg.size, "image": size,
        "batch": b, "device": device.type, "precision": a.precision, "threads": torch.get_num_threads(),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "first_step_s": round(times[0], 3), "step_s": round(step, 3), "images_per_s": round(b / step, 4),
        "step_cpu_s": round(min(cpu_times[a.warmup :]), 3), "warmup": a.warmup, "steps": a.steps,
        "objects": a.objects if instances else 0,
    }  # fmt: skip
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    else:
        out["peak_gib"] = round(rss_gib(), 2)
        out["base_rss_gib"] = round(base_rss, 2)
    return out


def _child(a: argparse.Namespace, method: str, backbone: str, conn) -> None:
    try:
        conn.send(measure(a, method, backbone, torch.device("cpu")))
    except BaseException as e:  # noqa: BLE001  (reported as a failed row)
        conn.send({"method": method, "backbone": backbone, "error": f"{type(e).__name__}: {e}"[:300]})


def run(a: argparse.Namespace, method: str, backbone: str, device: torch.device) -> dict[str, Any]:
    """One combination: in a fresh forked process on the CPU (its own peak RSS), in this one on CUDA."""
    if device.type == "cuda":
        try:
            return measure(a, method, backbone, device)
        except torch.OutOfMemoryError as e:
            return {"method": method, "backbone": backbone, "error": f"out of memory: {e}"[:300]}
        finally:
            torch.cuda.empty_cache()
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(a, method, backbone, send))
    child.start()
    send.close()
    result = {"method": method, "backbone": backbone, "error": "the process died (out of memory?)"}
    with contextlib.suppress(EOFError):
        result = recv.recv()
    child.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description="Training step time and peak memory per method x backbone.")
    ap.add_argument("--paper", action="store_true", help="paper size: full networks, 480 px, batch 2")
    ap.add_argument("--image", type=int, default=None, help="image size (demo 128, paper 480)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (demo 8, paper 2)")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: demo 1, paper all CPUs)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5; paper size on a CPU: 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; CUDA: 3)")
    ap.add_argument("--methods", nargs="*", default=sorted(METHODS))
    ap.add_argument("--backbones", nargs="*", default=sorted(BACKBONES))
    ap.add_argument("--num-masks", type=int, default=100, help="CoupAlign's N (the paper's best: 100)")
    ap.add_argument(
        "--objects", type=int, default=None,
        help="objects per image the N masks are matched to, where a method learns them (default: demo 4, paper 90)",
    )  # fmt: skip
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on the CPU) | fp32 | bf16")
    ap.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction,
                    help="NHWC images (default: on at paper size, as the preset)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="also print one JSON line per combination")
    a = ap.parse_args()
    a.image = a.image or (480 if a.paper else 128)
    a.batch = a.batch or (2 if a.paper else 8)
    a.objects = a.objects if a.objects is not None else (90 if a.paper else 4)
    a.channels_last = a.paper if a.channels_last is None else a.channels_last
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))  # fmt: skip
    cuda = device.type == "cuda"
    a.steps = a.steps if a.steps is not None else (1 if a.paper and not cuda else 5)
    a.warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    if a.precision == "auto":
        a.precision = "bf16" if device.type == "cuda" else "fp32"
    torch.set_num_threads(a.threads or ((os.cpu_count() or 1) if a.paper else 1))
    unit = "GPU memory allocated" if device.type == "cuda" else "peak RSS"
    print(f"# step time at {a.image}x{a.image}, batch {a.batch}, {a.precision}, "
          f"{'full' if a.paper else 'tiny'} networks, on {device.type}: {machine(device)}", flush=True)  # fmt: skip
    rows = []
    for method in a.methods:
        for backbone in a.backbones:
            r = run(a, method, backbone, device)
            if a.json or "error" in r:
                print(json.dumps(r), flush=True)
            if "error" in r:
                rows.append([method, backbone, "", "", "failed", "", "", r["error"][:60]])
                continue
            mem = f"{r['peak_gib']:.2f}" + (f" (base {r['base_rss_gib']:.2f})" if "base_rss_gib" in r else "")
            rows.append([method, backbone, r["num_masks"], r["params_M"], f"{r['step_s']:.3g}",
                         f"{r['step_cpu_s']:.3g}", f"{r['images_per_s']:.3g}", mem])  # fmt: skip
            print(f"# {method} {backbone}: {r['step_s']:.3f} s/step, {mem} GiB", file=sys.stderr, flush=True)
    print()
    header = ["method", "backbone", "N", "params (M)", "step (s)", "step (CPU s)", "images/s", f"{unit} (GiB)"]
    print(markdown(header, rows))


if __name__ == "__main__":
    main()
