"""The training data path at paper size: samples/s per DataLoader worker, and workers needed to feed one GPU.

What one item of :class:`ris.data.dataset.ReferSplit` costs at 480x480: read + JPEG decode, resize,
normalisation, RLE decode, mask resize (and tokenisation, done once for the whole split in ``__init__``,
shown per sample). Everything is generated in a temporary folder: a REFER set from
``ris/data/fake_refer.py``'s full-size generator (COCO-like polygons, image sizes around 640x480),
one JPEG per image with photo-like content (~100 KB at quality 90, COCO train2014 averages ~160 KB),
then the real ``ris prepare`` into Parquet, then the real ``ReferSplit``.

Two columns of stage timings: ``pil`` is the data path before the speed-up (Pillow decode and resize,
NumPy normalisation, per-item pandas row lookup), kept here as the reference; ``current`` is what
``ReferSplit`` does now. Then ``ReferSplit.__getitem__`` end to end in this process (one thread, as in a
DataLoader worker) and through ``torch.utils.data.DataLoader`` with 1..``--max-workers`` workers
(batch 4, the paper preset's micro-batch).

Workers needed: ``--gpu-images-per-s`` (images one GPU trains per second at paper size) divided by the
samples/s of one worker. A worker's rate is taken from its CPU time (item + collation into shared memory),
not from this machine's wall clock: it is what a worker does on a core of its own (the paper preset gives
a training job 8 CPUs and 8 workers), independent of what else runs here. The default GPU rate, 300
images/s, is an upper estimate for one H100/H200, not a measurement: timm's measured training throughput
of Swin-B/384 with AMP on an RTX 3090 is 74 images/s (huggingface/pytorch-image-models,
``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv``), 47 images/s scaled to 480 px by
(384/480)^2; an H100/H200 trains roughly 4-6x faster than a 3090 (the H200 has 5.1x its memory bandwidth,
4.8 vs 0.94 TB/s); 6x is 280, rounded up. LAVT's BERT, PWAMs and decoder are left out, so the figure
overestimates the GPU's rate, the safe side for sizing the data path. Measure yours with
``python -m benchmarks.step_time --paper`` on the GPU and pass it here.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.data_path       # ~1-2 min on 2 busy cores
    .venv/bin/python -m benchmarks.data_path --images 60 --repeats 3 --max-workers 4 --gpu-images-per-s 180
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, default_collate, get_worker_info

from benchmarks.bench_utils import machine, markdown
from ris.data import dataset as ds_module
from ris.data.dataset import IMAGENET_MEAN, IMAGENET_STD, ReferSplit
from ris.data.fake_refer import generate_refer
from ris.data.prepare import prepare, read_split
from ris.data.refer import decode_rle
from ris.data.tokenizer import build_vocab, encode, load_tokenizer

#: Estimated images/s of one H100/H200-class GPU training LAVT (Swin-B, 480 px); see the module docstring.
DEFAULT_GPU_IMAGES_PER_S = 300.0


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An (H, W, 3) uint8 image that JPEG-compresses and decodes like a photo: smooth colour field, shapes, noise."""
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 120)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 10, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def build_split(work: Path, n_images: int, seed: int) -> tuple[pd.DataFrame, Path, float]:
    """Generate REFER files and JPEGs under ``work``, prepare the train split; (table, images dir, mean KB)."""
    refer_dir, images_dir, prepared = work / "refer", work / "images", work / "prepared"
    images_dir.mkdir(parents=True, exist_ok=True)
    info = generate_refer(refer_dir, n_refs=3 * n_images, n_images=n_images, n_anns=5 * n_images, seed=seed)
    instances = json.loads((refer_dir / "instances.json").read_text())
    rng = np.random.default_rng(seed)
    total = 0
    for im in instances["images"]:
        buf = io.BytesIO()
        Image.fromarray(photo_like(rng, im["width"], im["height"])).save(buf, "JPEG", quality=90)
        (images_dir / im["file_name"]).write_bytes(buf.getvalue())
        total += buf.tell()
    assert len(instances["images"]) == info["images"]
    prepare(refer_dir, "unc", ["train"], prepared, images_dir)
    return read_split(prepared / "train.parquet"), images_dir, total / len(instances["images"]) / 1024


def tokenizer():
    """The bert-base-uncased vocabulary (shipped by the demo's text-encoder package), else one built here."""
    try:
        return load_tokenizer("all-MiniLM-L6-v2", None)
    except Exception:  # noqa: BLE001  (the package is optional for this benchmark)
        return None


# --- the data path before the speed-up, kept as the reference ------------------------------------------

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def pil_decode(path: Path) -> Image.Image:
    """Before: Pillow decode to RGB."""
    with Image.open(path) as im:
        return im.convert("RGB")


def pil_resize(image: Image.Image, size: int) -> Image.Image:
    """Before: Pillow bilinear resize."""
    return image.resize((size, size), Image.BILINEAR)


def pil_normalise(image: Image.Image) -> torch.Tensor:
    """Before: NumPy float conversion, then two tensor passes."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - _MEAN) / _STD


def pil_mask_resize(mask: np.ndarray, size: int) -> torch.Tensor:
    """Before: Pillow nearest resize, int64 target."""
    m = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST))
    return torch.from_numpy(m.astype(np.int64))


class PilReferSplit(ReferSplit):
    """``ReferSplit`` with its item as it was before the speed-up (and a DataFrame row lookup per item)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self.row_index(index)
        row = self.table.iloc[i]
        image = pil_normalise(pil_resize(pil_decode(self.images_dir / row["file_name"]), self.image_size))
        mask = decode_rle(row["rle"], int(row["height"]), int(row["width"]))
        return {
            "image": image,
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention[i],
            "target": pil_mask_resize(mask, self.image_size),
            "row": torch.tensor(i),
        }


def pil_stages(path: Path, rle: str, height: int, width: int, size: int) -> dict[str, Callable[[], Any]]:
    """The item before the speed-up, stage by stage: each entry runs that stage on prepared inputs."""
    rgb = pil_decode(path)
    resized = pil_resize(rgb, size)
    mask = decode_rle(rle, height, width)
    return {
        "read + decode": lambda: pil_decode(path),
        "resize": lambda: pil_resize(rgb, size),
        "to tensor + normalise": lambda: pil_normalise(resized),
        "RLE decode": lambda: decode_rle(rle, height, width),
        "mask resize": lambda: pil_mask_resize(mask, size),
    }


def current_stages(path: Path, rle: str, height: int, width: int, size: int) -> dict[str, Callable[[], Any]]:
    """``ReferSplit``'s item as it is now, stage by stage (the functions of ``ris.data.dataset``)."""
    m = ds_module
    raw = m.decode_image(path)
    mask = decode_rle(rle, height, width)
    resized = m.resize_image(raw, size)
    return {
        "read + decode": lambda: m.decode_image(path),
        "resize": lambda: m.resize_image(raw, size),
        "to tensor + normalise": lambda: m.normalise(resized),
        "RLE decode": lambda: decode_rle(rle, height, width),
        "mask resize": lambda: m.resize_mask(mask, size),
    }


def best_ms(fns: list[Callable[[], Any]], repeats: int) -> float:
    """Best over ``repeats`` passes of the mean CPU milliseconds per call over ``fns``.

    CPU time of this process (one thread): what the work costs on a core of its own, whatever else runs
    on a shared machine.
    """
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for fn in fns:
            fn()
        best = min(best, (time.process_time() - t) / len(fns))
    return best * 1e3


def stage_table(table: pd.DataFrame, images_dir: Path, size: int, repeats: int) -> dict[str, dict[str, float]]:
    """ms per sample of each stage, for the ``pil`` reference and the ``current`` path."""
    rows = table.drop_duplicates("image_id")
    out: dict[str, dict[str, float]] = {}
    for name, make in (("pil", pil_stages), ("current", current_stages)):
        per_row = [make(images_dir / r.file_name, r.rle, int(r.height), int(r.width), size) for r in rows.itertuples()]
        out[name] = {stage: best_ms([s[stage] for s in per_row], repeats) for stage in per_row[0]}
    # The old item looked its row up with DataFrame.iloc; the current one indexes prepared columns.
    n = len(table)
    out["pil"]["row lookup"] = best_ms([lambda i=i: table.iloc[i] for i in range(min(n, 200))], repeats)
    return out


def getitem_rate(split: ReferSplit, repeats: int) -> float:
    """Samples per CPU second of ``split[i]`` over the whole split in this process (best of ``repeats``)."""
    return 1e3 / best_ms([lambda i=i: split[i] for i in range(len(split))], repeats)


def timed_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``default_collate`` plus the producing worker's id and its CPU seconds so far (``time.process_time``)."""
    batch = default_collate(items)
    info = get_worker_info()
    batch["_worker"] = torch.tensor(info.id if info is not None else -1)
    batch["_cpu_s"] = torch.tensor(time.process_time(), dtype=torch.float64)
    return batch


def loader_rate(split: ReferSplit, workers: int, batch: int, epochs: int) -> tuple[float, float]:
    """(samples/s, CPU ms one worker spends per sample) through a DataLoader with ``workers`` processes.

    Both are the best over ``epochs`` epochs after a first one that starts the workers. The CPU time is
    what the workers' processes used (item, collation into shared memory), so it does not depend on what
    else runs on the machine; with ``workers`` = 0 it is the main process's.
    """
    loader = DataLoader(
        split, batch_size=batch, shuffle=False, num_workers=workers, persistent_workers=workers > 0,
        collate_fn=timed_collate,
    )  # fmt: skip
    best_rate, best_cpu = 0.0, float("inf")
    last: dict[int, float] = {}
    for epoch in range(epochs + 1):  # epoch 0 starts the workers
        t, n, start = time.perf_counter(), 0, dict(last)
        for b in loader:
            n += len(b["image"])
            last[int(b["_worker"])] = float(b["_cpu_s"])
        if epoch:
            best_rate = max(best_rate, n / (time.perf_counter() - t))
            best_cpu = min(best_cpu, sum(last[w] - start[w] for w in last) / n * 1e3)
    return best_rate, best_cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24, help="images generated (3 refs, ~8 sentences each)")
    ap.add_argument("--size", type=int, default=480, help="training image size (paper: 480)")
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="passes per measurement; the best is reported")
    ap.add_argument("--max-workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--batch", type=int, default=4, help="DataLoader batch (paper preset micro-batch: 4)")
    ap.add_argument("--gpu-images-per-s", type=float, default=DEFAULT_GPU_IMAGES_PER_S)
    ap.add_argument("--workers-per-gpu", type=int, default=8, help="paper preset num_workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    print(f"# data path at {a.size}x{a.size} on {machine()}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="ris_data_path_"))
    try:
        table, images_dir, kb = build_split(work, a.images, a.seed)
        tok = tokenizer()
        tok_name = "bert-base-uncased vocabulary" if tok is not None else "vocabulary built from the sentences"
        if tok is None:
            tok = load_tokenizer(None, build_vocab(table["sentence"]))
        sentences = table["sentence"].tolist()
        t = time.perf_counter()
        encode(tok, sentences, a.max_tokens)
        tok_ms = (time.perf_counter() - t) / len(sentences) * 1e3
        print(f"# {len(table)} samples, {table['image_id'].nunique()} JPEGs (mean {kb:.0f} KB), "
              f"tokenizer: {tok_name}", flush=True)  # fmt: skip

        stages = stage_table(table, images_dir, a.size, a.repeats)
        stages["pil"]["tokenise (in __init__, per sample)"] = tok_ms
        stages["current"]["tokenise (in __init__, per sample)"] = tok_ms
        names = list(stages["pil"])
        rows = [[s, f"{stages['pil'][s]:.2f}", f"{stages['current'].get(s, 0.0):.2f}"] for s in names]
        totals = {k: sum(v.values()) for k, v in stages.items()}
        rows.append(["**sum**", f"**{totals['pil']:.2f}**", f"**{totals['current']:.2f}**"])
        print(f"\nCPU ms per sample, one thread (best of {a.repeats}):\n")
        print(markdown(["stage", "pil (before)", "current"], rows))

        splits = {
            "pil (before)": PilReferSplit(table, images_dir, a.size, tok, a.max_tokens),
            "current": ReferSplit(table, images_dir, a.size, tok, a.max_tokens),
        }
        rows, paths = [], {}
        for name, split in splits.items():
            item = getitem_rate(split, a.repeats)
            loaders = {w: loader_rate(split, w, a.batch, a.repeats) for w in range(a.max_workers + 1)}
            # One worker on a core of its own: from the workers' CPU time, not this shared machine's wall clock.
            cpu_ms = min(c for w, (_, c) in loaders.items() if w > 0) if a.max_workers > 0 else loaders[0][1]
            worker = 1e3 / cpu_ms
            paths[name] = {
                "getitem_per_cpu_s": round(item, 1),
                "worker_per_s": round(worker, 1),
                "workers_needed": round(a.gpu_images_per_s / worker, 2),
                "fed_ratio": round(worker * a.workers_per_gpu / a.gpu_images_per_s, 2),
                "loader_wall_per_s": {str(w): round(r, 1) for w, (r, _) in loaders.items()},
            }
            rows.append([name, "`__getitem__`, this process", "-", f"{1e3 / item:.2f}", f"{item:.0f}"])
            rows += [
                [name, f"DataLoader, {w} worker(s)" if w else "DataLoader, in-process", f"{r:.0f}", f"{c:.2f}",
                 f"{1e3 / c:.0f}"]
                for w, (r, c) in loaders.items()
            ]  # fmt: skip
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"\nReferSplit at {a.size} px, batch {a.batch} (load average {load} on {os.cpu_count()} CPUs):\n")
        print(markdown(["path", "measure", "samples/s (wall)", "CPU ms/sample", "samples/s per worker"], rows))
        print(f"\nOne GPU at {a.gpu_images_per_s:.0f} images/s (--gpu-images-per-s), {a.workers_per_gpu} workers:\n")
        print(markdown(
            ["path", "samples/s per worker", "workers needed", f"{a.workers_per_gpu} workers feed", "2x target"],
            [[name, f"{r['worker_per_s']:.0f}", f"{r['workers_needed']:.1f}",
              f"{r['worker_per_s'] * a.workers_per_gpu:.0f}/s = {r['fed_ratio']:.1f}x",
              "met" if r["fed_ratio"] >= 2 else "missed"] for name, r in paths.items()],
        ))  # fmt: skip
        result = {
            "size": a.size, "samples": len(table), "jpeg_kb": round(kb, 1), "stages_ms": stages, "paths": paths,
            "gpu_images_per_s": a.gpu_images_per_s, "workers_per_gpu": a.workers_per_gpu,
            "cpus": os.cpu_count(), "torch": torch.__version__,
        }  # fmt: skip
        if a.json:
            print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
