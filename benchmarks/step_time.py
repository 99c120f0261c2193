"""Forward+backward time per training step of every method x backbone at demo (tiny) size, on CPU.

Usage: python benchmarks/step_time.py [--image 128] [--batch 8] [--threads 1] [--steps 5]
Prints one JSON line per (method, backbone, N): median seconds per step and parameter count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ris.models import BACKBONES, METHODS, ModelConfig, build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--methods", nargs="*", default=sorted(METHODS))
    ap.add_argument("--backbones", nargs="*", default=sorted(BACKBONES))
    ap.add_argument("--num-masks", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for method in a.methods:
        for backbone in a.backbones:
            n = a.num_masks if method == "coupalign" else 0
            model = build_model(ModelConfig(method, backbone, image_size=a.image, vocab_size=60, num_masks=n))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.randn(a.batch, 3, a.image, a.image)
            ids = torch.randint(5, 60, (a.batch, 20))
            am = torch.ones_like(ids)
            target = (torch.rand(a.batch, a.image, a.image) > 0.9).long()
            times = []
            for _ in range(a.steps + 1):
                t = time.perf_counter()
                loss = model.loss(model(x, ids, am), target)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            print(json.dumps({"method": method, "backbone": backbone, "num_masks": n, "image": a.image,
                              "batch": a.batch, "threads": a.threads, "step_s": round(statistics.median(times[1:]), 3),
                              "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}), flush=True)


if __name__ == "__main__":
    main()
