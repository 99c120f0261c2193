"""Peak memory and step time of a paper-size LAVT training step: ours with and without activation checkpointing,
and the official code's (yz93/LAVT-RIS) at the same micro-batch.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.paper_memory --micro-batches 2 --official /tmp/LAVT-RIS \\
        --out results/bench/paper_memory.json

A step is the paper preset's: Swin-B (window 12) + PWAMs + decoder at 480x480 and BERT-base, 20 word slots
(12 real), random init (nothing is downloaded; memory and time do not depend on the weights), forward,
LAVT's weighted cross-entropy, backward, AdamW over the official ``train.py`` groups (``train.optimizer:
lavt_official``, :func:`ris.training.optim.build_optimizer`: BERT's embeddings and last two layers not
optimised). Ours with ``activation_checkpointing`` passes the model option of that name
(``ModelConfig.options``). The official rows build ``lib.segmentation.lavt`` (Swin-B, window 12) and its
``bert.modeling_bert.BertModel`` from a checkout given by ``--official`` (its files are read at run time;
nothing of that GPL-3.0 code is in this repository) and run its ``train.py`` step: BERT -> LAVT ->
cross-entropy weighted [0.9, 1.1] -> AdamW over its four parameter groups (it computes, and drops, the
gradients of BERT's embeddings and last two layers). Each as its trainer does it: ours frees the gradients
after the update (``ris train``), the official code zeroes them before the backward, so they live on.

Every configuration runs in a fresh process (``spawn``): ``--steps`` steps (the first allocates AdamW's
state, so the last steps run at the training peak), the fastest reported in wall and CPU seconds. Memory:
on the CPU the process's peak RSS (``ru_maxrss``), beside its RSS once the model and inputs were built;
on CUDA ``torch.cuda.max_memory_allocated`` (bf16 autocast and channels_last there, as the paper preset;
fp32 on the CPU). Prints one Markdown table and writes it as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_utils import BERT_VOCAB, machine, markdown, official_lavt, paper_model_config
from benchmarks.step_time import rss_gib
from ris.utils import write_json

IMPLS = ("ours", "ours+ckpt", "official")
WORDS, REAL_WORDS = 20, 12
CKPT_OPTION = "activation_checkpointing"


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def batch_inputs(micro: int, image: int, device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    """Random images, token ids with ``REAL_WORDS`` real words of ``WORDS``, their mask and a 0/1 target."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(micro, 3, image, image, generator=g)
    ids = torch.randint(1000, BERT_VOCAB, (micro, WORDS), generator=g)
    mask = torch.zeros(micro, WORDS, dtype=torch.long)
    mask[:, :REAL_WORDS] = 1
    target = (torch.rand(micro, image, image, generator=g) > 0.5).long()
    out = {"images": images, "ids": ids, "mask": mask, "target": target}
    out = {k: v.to(device) for k, v in out.items()}
    if channels_last:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


def ours_step(
    micro: int, checkpointing: bool, device: torch.device, amp_dtype: torch.dtype | None, image: int = 480,
    size: str = "full",
) -> Callable[[], float]:  # fmt: skip
    """One training step of our paper-preset LAVT (``size`` tiny: the demo-size sibling) as a closure -> loss."""
    from ris.models import build_model
    from ris.training.optim import build_optimizer

    torch.manual_seed(0)
    cfg = paper_model_config("lavt", "swin_b", image)
    cfg.size = size
    cfg.options = {**cfg.options, CKPT_OPTION: checkpointing}  # whatever config.yaml's paper preset says
    model = build_model(cfg)
    if checkpointing and not getattr(model, CKPT_OPTION, False):
        raise NotImplementedError(f"the model option {CKPT_OPTION} is not implemented by ris.models (yet)")
    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format).train()
    opt = build_optimizer(model, "lavt_official", lr=5e-5, weight_decay=0.01)
    x = batch_inputs(micro, image, device, channels_last=cuda)
    target = x["target"].float()

    def step() -> float:  # as ris train: gradients freed after the update, not held through the next forward
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x["images"], x["ids"], x["mask"])
            loss = model.loss(out, target)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def official_step(
    root: Path, micro: int, device: torch.device, amp_dtype: torch.dtype | None, image: int = 480
) -> Callable[[], float]:
    """One training step of the official code (its ``train.py`` ``train_one_epoch`` body) as a closure -> loss."""
    torch.manual_seed(0)
    model = official_lavt(root).to(device).train()  # registers the checkout's bert package too
    from bert.configuration_bert import BertConfig  # noqa: PLC0415  (from the checkout)
    from bert.modeling_bert import BertModel  # noqa: PLC0415

    bert = BertModel(BertConfig()).to(device).train()  # bert-base-uncased's architecture
    bert.pooler = None  # as train.py
    no_decay, decay = [], []
    for name, p in model.backbone.named_parameters():
        (no_decay if any(k in name for k in ("norm", "absolute_pos_embed", "relative_position_bias_table")) else
         decay).append(p)  # fmt: skip
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay},
        {"params": [p for p in model.classifier.parameters() if p.requires_grad]},
        {"params": reduce(list.__add__, [[p for p in bert.encoder.layer[i].parameters()] for i in range(10)])},
    ]
    opt = torch.optim.AdamW(groups, lr=5e-5, weight_decay=0.01, amsgrad=False)
    x = batch_inputs(micro, image, device, channels_last=False)
    weight = torch.tensor([0.9, 1.1], device=device)

    def step() -> float:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            words = bert(x["ids"], attention_mask=x["mask"])[0].permute(0, 2, 1)
            out = model(x["images"], words, l_mask=x["mask"].unsqueeze(-1))
            loss = torch.nn.functional.cross_entropy(out.float(), x["target"], weight=weight)
        opt.zero_grad()  # as train.py: zeroed, not freed, so the gradients live through the forward
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def measure(conf: dict[str, Any]) -> dict[str, Any]:
    """Build one configuration and run its steps in this process; memory, times and what was measured."""
    device = torch.device(conf["device"])
    torch.set_num_threads(conf["threads"])
    amp_dtype = torch.bfloat16 if conf["precision"] == "bf16" else None
    base_rss = rss_gib()
    if conf["impl"] == "official":
        step = official_step(Path(conf["official"]), conf["micro"], device, amp_dtype, conf["image"])
    else:
        step = ours_step(conf["micro"], conf["impl"] == "ours+ckpt", device, amp_dtype, conf["image"], conf["size"])
    built_rss = rss_gib()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    walls, cpus, losses = [], [], []
    for _ in range(conf["steps"]):
        w, c = time.perf_counter(), time.process_time()
        losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    timed = slice(1, None) if len(walls) > 1 else slice(None)
    out = {**conf, "step_s": min(walls[timed]), "step_cpu_s": min(cpus[timed]), "first_step_s": walls[0],
           "loss": losses[-1]}  # fmt: skip
    out["images_per_s"] = conf["micro"] / out["step_s"]
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["memory"] = "torch.cuda.max_memory_allocated"
    else:
        out.update(peak_gib=rss_gib(), built_rss_gib=built_rss, base_rss_gib=base_rss, memory="peak RSS (ru_maxrss)")
    return out


def _child(conf: dict[str, Any], conn) -> None:
    try:
        conn.send(measure(conf))
    except BaseException as e:  # noqa: BLE001  (reported as a failed row)
        conn.send({**conf, "error": f"{type(e).__name__}: {e}"[:300]})


def run_fresh(conf: dict[str, Any]) -> dict[str, Any]:
    """``measure(conf)`` in a fresh (spawned) process: its peak RSS is this configuration's alone."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(conf, send))
    child.start()
    send.close()
    result = {**conf, "error": f"the process died (exit status {child.exitcode}; out of memory?)"}
    with contextlib.suppress(EOFError):
        result = recv.recv()
    child.join()
    if "error" in result and child.exitcode:
        result["error"] = f"the process died (exit status {child.exitcode}; out of memory?)"
    return result


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per row: peak memory / the official's and step time / ours without checkpointing, at its micro-batch."""
    by = {(r["impl"], r["micro"]): r for r in rows if "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        official, ours = by.get(("official", r["micro"])), by.get(("ours", r["micro"]))
        r["peak_vs_official"] = r["peak_gib"] / official["peak_gib"] if official else None
        r["step_vs_ours"] = r["step_s"] / ours["step_s"] if ours else None


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table."""
    header = ["implementation", "micro-batch", "device", "precision", "peak GiB", "after build GiB", "step (s)",
              "step (CPU s)", "images/s", "peak / official", "step / ours"]  # fmt: skip
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["impl"], r["micro"], r["device"], r["precision"], "failed", "", "", "", "", "", r["error"]])
            continue
        ratio = [f"{r[k]:.2f}x" if r.get(k) is not None else "-" for k in ("peak_vs_official", "step_vs_ours")]
        built = f"{r['built_rss_gib']:.2f}" if "built_rss_gib" in r else "-"
        body.append([r["impl"], r["micro"], r["device"], r["precision"], f"{r['peak_gib']:.2f}", built,
                     f"{r['step_s']:.3g}", f"{r['step_cpu_s']:.3g}", f"{r['images_per_s']:.3g}", *ratio])  # fmt: skip
    return markdown(header, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--official", type=Path, default=None, help="a yz93/LAVT-RIS checkout (else no official rows)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA, fp32 on the CPU) | fp32 | bf16")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1)
    ap.add_argument("--steps", type=int, default=2, help="steps per configuration (the first is not timed)")
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--size", default="full", help="full (paper) | tiny (a quick check of this script)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    precision = ("bf16" if device.type == "cuda" else "fp32") if a.precision == "auto" else a.precision
    impls = [i for i in a.impls if i != "official" or a.official]
    if "official" in a.impls and not a.official:
        print("# no --official checkout given: no official rows", flush=True)
    print(f"# paper LAVT training step, {a.image} px, {precision}, on {device.type}: {machine(device)}", flush=True)
    rows = []
    for micro in a.micro_batches:
        for impl in impls:
            conf = {"impl": impl, "micro": micro, "device": device.type, "precision": precision, "image": a.image,
                    "size": a.size, "threads": a.threads, "steps": a.steps,
                    "official": str(a.official) if a.official else None}  # fmt: skip
            rows.append(run_fresh(conf))
            r = rows[-1]
            print(f"# {impl} micro-batch {micro}: " + (r["error"] if "error" in r else
                  f"{r['peak_gib']:.2f} GiB, {r['step_s']:.2f} s/step"), flush=True)  # fmt: skip
    add_ratios(rows)
    print()
    print(table(rows))
    if a.out:
        write_json(a.out, {"machine": machine(device), "load_average": os.getloadavg(), "rows": rows})
        print(f"\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
