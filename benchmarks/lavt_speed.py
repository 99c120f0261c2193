"""Speed of our paper-size LAVT (Swin-B window 12 + PWAMs + gates + decoder, BERT excluded), side by side with
the official code.

Usage: python -m benchmarks.lavt_speed [--official PATH] [--threads 2] [--repeats 5] [--batches 1]
       [--train-batch 4] [--image 480] [--profile 10] [--option channels_last_fusion ...]

Ours: ``RISModel.forward_words``; the official: ``lib.segmentation.lavt`` (Swin-B, window 12) built from the
yz93/LAVT-RIS checkout ``--official`` points at (read at run time, never copied here: it is GPL-3.0). Both on
the same random word features (20 slots, 12 real), images and 0/1 target, random weights (the time does not
depend on them), eval mode: forward without grad, and forward + backward of LAVT's class-weighted
cross-entropy (ours ``mask_loss`` on the 1-logit map, the official ``cross_entropy`` weighted [0.9, 1.1] on
its two class scores, as its ``train.py``: the same loss). Each model's forward as it is: the official one
ends by upsampling its scores to the image, ours leaves that to the loss / ``predict``. On the CPU fp32; on
CUDA bf16 autocast and channels_last for both, with images/s and ``torch.cuda.max_memory_allocated``.

``--repeats`` timed runs after one warm-up each, wall and CPU seconds (``time.process_time``: all threads of
the process, the work itself on a shared machine). The repeats alternate ours and the official (the order
swapped every repeat), so load on a shared machine hits both alike; the table gives each one's median
[min-max] and two ratios: of the medians, and the median [min-max] of the per-repeat ratios (ours over the
official run beside it: the pairs share the load of their moment). Without ``--official`` the official
column shows the figures recorded on this 2-CPU machine when it was quiet (``OFFICIAL_S``, issue 11: batch
1, 480 px, 2 threads; not measured in this run, no CPU seconds). ``--profile N`` also profiles one forward +
backward (``torch.profiler``, batch 1) of ours and, with ``--official``, of the official model on the same
inputs: totals, and the N ops with the most self CPU time in either, with their call counts (counts do not
depend on the machine's load). Prints the machine, the load average before and after, and one Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
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


def timed(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Per name: the wall and CPU seconds of ``repeats`` calls after one warm-up (``walls``, ``cpus``; CUDA:
    synchronised, and the peak memory). The calls alternate between the names, the order swapped every
    repeat, so that load on a shared machine hits every one alike."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict[str, dict[str, Any]] = {k: {"walls": [], "cpus": [], "peak_gib": 0.0} for k in fns}
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
            out[name]["walls"].append(time.perf_counter() - w)
            out[name]["cpus"].append(time.process_time() - c)
            if cuda:
                out[name]["peak_gib"] = max(out[name]["peak_gib"], torch.cuda.max_memory_allocated(device) / 2**30)
    return out


def spread(xs: list[float]) -> str:
    """``median [min-max]`` of ``xs``, two decimals; ``-`` when empty."""
    return f"{statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]" if xs else "-"


def ratios(ours: list[float], official: list[float]) -> tuple[str, str]:
    """Ours over the official: the ratio of the medians (``1.00x``), and the median [min-max] of the
    per-repeat ratios (each of ours over the official run beside it); ``-`` where there is no official run."""
    if not official:
        return "-", "-"
    paired = [a / b for a, b in zip(ours, official)]
    of_medians = f"{statistics.median(ours) / statistics.median(official):.2f}x"
    return of_medians, (f"{spread(paired)}x" if len(paired) == len(ours) else "-")


def op_table(fn: Callable[[], None]) -> tuple[dict[str, tuple[int, float]], float]:
    """``torch.profiler`` of one call after a warm-up: per op name (calls, self CPU ms), and the total."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    ops = {e.key: (e.count, e.self_cpu_time_total / 1e3) for e in p.key_averages()}
    return ops, sum(ms for _, ms in ops.values())


def profile_report(fns: dict[str, Callable[[], None]], top: int) -> str:
    """Op profiles of one call of each of ``fns`` side by side: totals (calls, self CPU s), then the ``top``
    ops with the most self CPU time in any of them, with their calls and self CPU ms in each."""
    tables = {k: op_table(fn) for k, fn in fns.items()}
    totals = [f"{k}: {sum(c for c, _ in ops.values()):,} op calls, {total / 1e3:.2f} s self CPU"
              for k, (ops, total) in tables.items()]  # fmt: skip
    names = sorted({n for ops, _ in tables.values() for n in ops}, key=lambda n: -max(
        ops.get(n, (0, 0.0))[1] for ops, _ in tables.values()))  # fmt: skip
    header = ["op"] + [f"{k} {what}" for k in tables for what in ("calls", "self CPU ms")]
    rows = [[n] + [x for ops, _ in tables.values() for x in (ops.get(n, (0, 0.0))[0], f"{ops.get(n, (0, 0.0))[1]:.0f}")]
            for n in names[:top]]  # fmt: skip
    return "profile of one forward+backward, batch 1: " + "; ".join(totals) + "\n" + markdown(header, rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, default=None, help="a yz93/LAVT-RIS checkout, timed side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes of the forward/backward rows")
    ap.add_argument("--train-batch", type=int, default=4, help="extra forward+backward row at this batch; 0: none")
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--profile", type=int, default=0, help="profile one forward+backward of each model: the top N ops")
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
        ours_r, off = r["ours"], r.get("official", {"walls": [], "cpus": []})
        if not a.official and b == 1 and a.image == 480:
            off = {"walls": [OFFICIAL_S[kind]], "cpus": []}
        wall_ratio = ratios(ours_r["walls"], off["walls"])
        if not a.official:  # a recorded figure: the per-repeat ratio means nothing
            wall_ratio = (wall_ratio[0], "-")
        rows.append(
            [
                kind,
                b,
                spread(ours_r["walls"]),
                spread(off["walls"]),
                *wall_ratio,
                spread(ours_r["cpus"]),
                spread(off["cpus"]),
                *ratios(ours_r["cpus"], off["cpus"]),
                f"{b / statistics.median(ours_r['walls']):.2f}",
                " / ".join(f"{x['peak_gib']:.2f}" for x in r.values()) if device.type == "cuda" else "-",
            ]
        )
        for k, x in r.items():  # every repeat, to judge the noise on a shared machine
            print(f"# {kind} batch {b} {k}: wall {[round(t, 2) for t in x['walls']]}, "
                  f"CPU {[round(t, 2) for t in x['cpus']]}", flush=True)  # fmt: skip
        print(rows[-1], flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = ["pass", "batch", "ours wall s median [min-max]", "official wall s", "ours/official wall (medians)",
              "ours/official wall per repeat", "ours CPU s", "official CPU s", "ours/official CPU (medians)",
              "ours/official CPU per repeat", "ours images/s", "peak GiB (ours / official)"]  # fmt: skip
    print(f"{a.repeats} alternating repeats after a warm-up each; median [min-max]")
    print(markdown(header, rows))
    if a.profile:
        batch = inputs(1, a.image, ours.text.dim, device)
        fns = {k: step_fn(m, batch, True, device, official=k == "official") for k, m in models.items()}
        print(profile_report(fns, a.profile))
        print(f"load average after the profile: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
