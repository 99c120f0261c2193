"""CPU inference time of the paper-size networks (480x480, 20 tokens), beside their parameter counts.

Usage: python -m benchmarks.paper_forward [--methods lavt ...] [--backbones swin_b ...] [--threads 1]
[--repeats 3] [--image 480] [--json]

Every method x backbone by default (LAVT Swin-B alone: ``--methods lavt --backbones swin_b``). Each network has
the paper preset's options (``bench_utils.paper_model_config``; CoupAlign at N = 100) and random weights (the
time does not depend on them); batch 1, no grad, after one warm-up forward. Parameters: the backbone with its
fusions (PWAMs, gates, norms: what the official LAVT checkpoint counts as its backbone), the text encoder
(BERT-base) and the rest (decoder and the method's heads). Prints the machine and a Markdown table; ``--json``
also one JSON line per network. That these networks build and give finite logits is a test
(``tests/test_models.py``); their size and speed are measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from benchmarks.bench_utils import machine, markdown, paper_model_config
from ris.models import BACKBONES, METHODS, build_model


def count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def measure(method: str, backbone: str, image: int, repeats: int, num_masks: int) -> dict[str, Any]:
    """Parameter counts and seconds per forward of one paper-size network."""
    torch.manual_seed(0)
    cfg = paper_model_config(method, backbone, image, num_masks if method == "coupalign" else 0)
    model = build_model(cfg).eval()
    images = torch.randn(1, 3, image, image)
    ids = torch.randint(1000, cfg.vocab_size, (1, 20))
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0  # 12 real words, 8 padding slots
    times = []
    with torch.no_grad():
        model(images, ids, mask)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(images, ids, mask)
            times.append(time.perf_counter() - start)
    backbone_params, text_params, total = count(model.backbone, model.fusions), count(model.text), count(model)
    return {
        "method": method,
        "backbone": backbone,
        "num_masks": cfg.num_masks,
        "image": image,
        "params": {
            "backbone": backbone_params,
            "text": text_params,
            "rest": total - backbone_params - text_params,
            "total": total,
        },
        "forward_s": {"median": round(statistics.median(times), 3), "min": round(min(times), 3)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="CPU forward time and parameter counts of the paper-size networks.")
    ap.add_argument("--methods", nargs="*", default=sorted(METHODS))
    ap.add_argument("--backbones", nargs="*", default=sorted(BACKBONES))
    ap.add_argument("--num-masks", type=int, default=100, help="CoupAlign's N (the paper's best: 100)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", type=int, default=480)
    ap.add_argument("--json", action="store_true", help="also print one JSON line per network")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"{machine()}; {a.image}x{a.image}, batch 1, 20 tokens, fp32, {a.repeats} repeat(s) after a warm-up")
    rows = []
    for method in a.methods:
        for backbone in a.backbones:
            r = measure(method, backbone, a.image, a.repeats, a.num_masks)
            if a.json:
                print(json.dumps(r))
            p, s = r["params"], r["forward_s"]
            rows.append([method, backbone, r["num_masks"], f"{p['total']:,}", f"{p['backbone']:,}", f"{p['text']:,}",
                         f"{p['rest']:,}", s["median"], s["min"]])  # fmt: skip
    header = [
        "method",
        "backbone",
        "N",
        "params",
        "backbone + fusions",
        "text",
        "rest",
        "forward, median (s)",
        "min (s)",
    ]
    print(markdown(header, rows))


if __name__ == "__main__":
    main()
