"""CPU inference time of LAVT at paper size (Swin-B + BERT-base, 480x480, 20 tokens), beside its size.

Usage: python -m benchmarks.lavt_paper_forward [--threads 1] [--repeats 3] [--image 480]
Random weights (the time does not depend on them); batch 1, no grad, after one warm-up forward. Prints
one JSON line: parameter counts (backbone with PWAMs, gates and norms / decoder / BERT, as the official
checkpoint counts them) and the median and min seconds per forward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ris.models import ModelConfig, build_model


def count(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", type=int, default=480)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(method="lavt", size="full", image_size=a.image)).eval()
    images = torch.randn(1, 3, a.image, a.image)
    ids = torch.randint(1000, model.cfg.vocab_size, (1, 20))
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    times = []
    with torch.no_grad():
        model(images, ids, mask)  # warm-up
        for _ in range(a.repeats):
            start = time.perf_counter()
            model(images, ids, mask)
            times.append(time.perf_counter() - start)
    result = {
        "model": f"lavt swin_b full, {a.image}x{a.image}, batch 1, 20 tokens, CPU, {a.threads} thread(s)",
        "params": {
            "backbone": count(model.backbone, model.fusions),
            "classifier": count(model.decoder, model.classifier),
            "bert": count(model.text),
            "total": count(model),
        },
        "forward_s": {"median": round(statistics.median(times), 3), "min": round(min(times), 3)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
