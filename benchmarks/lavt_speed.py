"""Speed of our paper-size LAVT (Swin-B window 12 + PWAMs + gates + decoder, BERT excluded), side by side with
the official code.

Usage: python -m benchmarks.lavt_speed [--official PATH] [--threads 2] [--repeats 3] [--batches 1]
       [--train-batch 4] [--image 480] [--profile 10] [--option channels_last_fusion ...]

Ours: ``RISModel.forward_words``; the official: ``lib.segmentation.lavt`` (Swin-B, window 12) built from the
yz93/LAVT-RIS checkout ``--official`` points at (read at run time, never copied here: it is GPL-3.0). Both on
the same random word features (20 slots, 12 real), images and 0/1 target, random weights (the time does not
depend on them), eval mode: forward without grad, and forward + backward of LAVT's class-weighted
cross-entropy (ours ``mask_loss`` on the 1-logit map, the official ``cross_entropy`` weighted [0.9, 1.1] on
its two class scores, as its ``train.py``: the same loss). Each model's forward as it is: the official one
ends by upsampling its scores to the image, ours leaves that to the loss / ``predict``. On the CPU fp32; on
CUDA bf16 autocast and channels_last for both, with images/s and ``torch.cuda.max_memory_allocated``.

Best of ``--repeats`` runs after one warm-up each, wall and CPU seconds (``time.process_time``: all threads of
the process, the work itself on a shared machine). The repeats alternate ours and the official (the order
swapped every repeat), so load on a shared machine hits both alike. Without ``--official`` the official
column shows the figures recorded on this 2-CPU machine when it was quiet (``OFFICIAL_S``, issue 11: batch
1, 480 px, 2 threads; not measured in this run, no CPU seconds). ``--profile N`` also prints
``torch.profiler``'s top N ops (self CPU time) of one forward + backward of ours. Prints the machine, the
load average before and after, and one Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.bench_utils import machine, markdown, official_lavt
from ris.models import ModelConfig, RISModel, build_model

#: Fallback without ``--official`` only: the official code measured on this 2-CPU machine when it was quiet,
#: 2 threads, batch 1, 480 px, BERT excluded, best of 2-3 runs (issue 11). Not comparable under other load.
OFFICIAL_S = {"forward": 2.29, "forward+backward": 8.33}
WORDS, REAL_WORDS = 20, 12
FG_WEIGHT, BG_WEIGHT = 1.1, 0.9  # LAVT's class weights (official train.py: weight [0.9, 1.1])


def build(image: int, options: dict[str, Any]) -> RISModel:
    """The paper-size LAVT (Swin-B full, random init: nothing is downloaded) with speed ``options``."""
    torch.manual_seed(0)
    return build_model(ModelConfig(method="lavt", size="full", image_size=image, options=options)).eval()


def build_official(root: Path) -> torch.nn.Module:
    """The official paper-size LAVT from the checkout at ``root`` (random init), eval mode."""
    torch.manual_seed(0)
    return official_lavt(root).eval()


def inputs(batch: int, image: int, dim: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Images, word features (B, 20, dim) with 12 real words, their mask, a 0/1 target."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image, image, generator=g)
    words = torch.randn(batch, WORDS, dim, generator=g)
    mask = torch.zeros(batch, WORDS, dtype=torch.long)
    mask[:, :REAL_WORDS] = 1
    target = (torch.rand(batch, image, image, generator=g) > 0.5).float()
    out = [t.to(device) for t in (images, words, mask, target)]
    if device.type == "cuda":
        out[0] = out[0].contiguous(memory_format=torch.channels_last)
    return tuple(out)


def step_fn(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, ...],
    backward: bool,
    device: torch.device,
    official: bool = False,
) -> Callable[[], None]:
    """One forward (no grad) or forward + backward (loss, grads set to None after) of ours or the official
    model (``official``: words as (B, D, L), the mask as (B, L, 1), cross-entropy on its two scores)."""
    images, words, mask, target = batch
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    if official:
        words_t, mask_t, target_l = words.permute(0, 2, 1), mask.unsqueeze(-1), target.long()
        weight = torch.tensor([BG_WEIGHT, FG_WEIGHT], device=device)

    def forward() -> torch.Tensor:
        if official:
            return model(images, words_t, l_mask=mask_t)
        return model.forward_words(images, words, mask)["logits"]

    def loss(out: torch.Tensor) -> torch.Tensor:
        if official:
            return F.cross_entropy(out.float(), target_l, weight=weight)
        return model.mask_loss(out.float(), target)

    def run() -> None:
        if backward:
            with amp:
                out = forward()
            loss(out).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), amp:
                forward()

    return run


def timed(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Per name: best wall and CPU seconds of ``repeats`` calls after one warm-up, and every call's (CUDA:
    synchronised, peak memory). The calls alternate between the names, the order swapped every repeat, so that load on a
    shared machine hits every one alike."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    peaks = dict.fromkeys(fns, 0.0)
    for fn in fns.values():
        fn()
        sync()
    names = list(fns)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            w, c = time.perf_counter(), time.process_time()
            fns[name]()
            sync()
            walls[name].append(time.perf_counter() - w)
            cpus[name].append(time.process_time() - c)
            if cuda:
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) / 2**30)
    out: dict[str, dict[str, Any]] = {
        k: {"wall": min(walls[k]), "cpu": min(cpus[k]), "walls": walls[k], "cpus": cpus[k]} for k in fns
    }
    if cuda:
        for k in fns:
            out[k]["peak_gib"] = peaks[k]
    return out


def profile(fn: Callable, top: int) -> str:
    """``torch.profiler``'s top ops by self CPU time of one call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    fn()
    with prof(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def fmt_ratio(ours: float, official: float | None) -> str:
    """``ours / official`` as ``1.00x``, ``-`` where there is no official figure."""
    return f"{ours / official:.2f}x" if official else "-"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, default=None, help="a yz93/LAVT-RIS checkout, timed side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes of the forward/backward rows")
    ap.add_argument("--train-batch", type=int, default=4, help="extra forward+backward row at this batch; 0: none")
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--profile", type=int, default=0, help="print the top N ops of one forward+backward of ours")
    ap.add_argument(
        "--option", action="append", default=[], help="a model option to switch on, e.g. channels_last_fusion"
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    models: dict[str, torch.nn.Module] = {"ours": build(a.image, dict.fromkeys(a.option, True))}
    if a.official:
        models["official"] = build_official(a.official)
    models = {k: m.to(device, memory_format=layout) for k, m in models.items()}
    ours = models["ours"]
    print(machine(device))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    params["ours"] -= sum(p.numel() for p in ours.text.parameters())
    print(f"parameters without BERT: {', '.join(f'{k} {n:,}' for k, n in params.items())}; "
          f"options switched on: {', '.join(a.option) or 'none'}")  # fmt: skip
    if not a.official:
        print(f"no --official: the official column is the figures recorded in issue 11 ({OFFICIAL_S}), not this run's")
    rows: list[list[Any]] = []
    plan = [(b, False) for b in a.batches] + [(b, True) for b in a.batches]
    if a.train_batch and a.train_batch not in a.batches:
        plan.append((a.train_batch, True))
    for b, backward in plan:
        batch = inputs(b, a.image, ours.text.dim, device)
        fns = {k: step_fn(m, batch, backward, device, official=k == "official") for k, m in models.items()}
        r = timed(fns, a.repeats, device)
        kind = "forward+backward" if backward else "forward"
        off = r.get("official", {})
        if not a.official and b == 1 and a.image == 480:
            off = {"wall": OFFICIAL_S[kind]}
        rows.append(
            [
                kind,
                b,
                f"{r['ours']['wall']:.2f}",
                f"{off['wall']:.2f}" if off else "-",
                fmt_ratio(r["ours"]["wall"], off.get("wall")),
                f"{r['ours']['cpu']:.2f}",
                f"{off['cpu']:.2f}" if "cpu" in off else "-",
                fmt_ratio(r["ours"]["cpu"], off.get("cpu")),
                f"{b / r['ours']['wall']:.2f}",
                " / ".join(f"{x['peak_gib']:.2f}" for x in r.values()) if device.type == "cuda" else "-",
            ]
        )
        for k, x in r.items():  # every repeat, to judge the noise on a shared machine
            print(f"# {kind} batch {b} {k}: wall {[round(t, 2) for t in x['walls']]}, "
                  f"CPU {[round(t, 2) for t in x['cpus']]}", flush=True)  # fmt: skip
        print(rows[-1], flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = ["pass", "batch", "ours wall (s)", "official wall (s)", "ours/official wall", "ours CPU (s)",
              "official CPU (s)", "ours/official CPU", "ours images/s", "peak GiB (ours / official)"]  # fmt: skip
    print(markdown(header, rows))
    if a.profile:
        print(profile(step_fn(ours, inputs(1, a.image, ours.text.dim, device), True, device), a.profile))


if __name__ == "__main__":
    main()
