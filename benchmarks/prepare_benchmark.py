"""Benchmark of ``ris.data.prepare.prepare`` on a generated REFER set of full RefCOCO size.

Requirement: full RefCOCO (~50,000 refs, ~142,000 sentences, 19,994 images, 196,771 annotations in
``instances.json``, polygon segmentations, images around 640x480) prepares in well under two minutes on a
2-core machine. No real data is needed: this script generates a REFER folder of that size
deterministically (``numpy`` seeded), then times ``prepare`` end to end and its stages separately.

Run (from the repository root)::

    .venv/bin/python -m benchmarks.prepare_benchmark                       # full RefCOCO size, temp dir
    .venv/bin/python -m benchmarks.prepare_benchmark --refs 50000 --sentences-per-ref 2.84 \\
        --images 19994 --anns 196771 --out /tmp/ris_bench --keep            # keep the files afterwards
    .venv/bin/python -m benchmarks.prepare_benchmark --refs 200 --images 80 --anns 400   # a quick smoke run

What is generated under ``--out`` (a temporary folder by default; removed unless ``--keep``):

* ``refer/refs(unc).p`` - pickled (protocol 2, like the originals) list of RefCOCO-style ref dicts; splits
  train/val/testA/testB in RefCOCO proportions (42404/3811/1975/1810 refs), assigned per image so the splits
  share no image; 1+ sentences of 3-10 words per ref (``--sentences-per-ref`` on average).
* ``refer/instances.json`` - COCO-style images (sizes around 640x480), annotations with convex-ish random
  polygons of 10-40 vertices inside the image (~3% with two polygons, ~1% ``iscrowd`` with an uncompressed
  RLE dict), categories.
* ``images/`` - one *empty* stand-in file per image (``prepare`` only checks that the images exist).
* ``prepared/`` - the output of ``prepare``.

The generator runs in a forked child process so that the reported peak RSS (``peak_rss_mb``) is the one of
``prepare`` and the stage timings (``generate_peak_rss_mb`` is the generator's). Output: progress on stderr,
then ONE JSON line on stdout with timings (seconds), counts and ``os.cpu_count()``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "testA", "testB")
#: Refs per split of RefCOCO (unc); the generator keeps these proportions.
REFCOCO_SPLIT_REFS = {"train": 42404, "val": 3811, "testA": 1975, "testB": 1810}
SPLIT_BY = "unc"
#: (width, height) of stand-in images and their probabilities: around 640x480 like COCO.
IMAGE_SIZES = ((640, 480), (640, 427), (480, 640), (640, 426), (427, 640), (500, 375), (640, 360), (612, 612))
IMAGE_SIZE_P = (0.35, 0.2, 0.12, 0.1, 0.08, 0.05, 0.05, 0.05)
NUM_CATEGORIES = 80
WORDS = (
    "man woman person boy girl child guy lady player kid dog cat horse cow sheep bear zebra giraffe elephant "
    "car truck bus bike motorcycle train boat plane chair couch bed table bench umbrella bag suitcase bottle "
    "cup bowl banana apple orange pizza donut cake sandwich broccoli carrot left right middle center top "
    "bottom front back far near closest biggest smallest tall short big small red blue green white black "
    "yellow brown gray pink orange purple striped dark light wearing holding sitting standing walking on in "
    "with behind next to under above the a of his her shirt jacket hat pants"
).split()


def _split_cuts(ref_counts_per_image: np.ndarray, n_refs: int) -> np.ndarray:
    """Indices cutting a list of images (with their ref counts) into the 4 splits in RefCOCO proportions."""
    n_img = len(ref_counts_per_image)
    if n_img < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} referenced images to fill the splits, got {n_img}")
    total = sum(REFCOCO_SPLIT_REFS.values())
    targets = np.cumsum([REFCOCO_SPLIT_REFS[s] for s in SPLITS])[:-1] / total * n_refs
    cum = np.cumsum(ref_counts_per_image)
    cuts = np.searchsorted(cum, targets, side="left") + 1
    # Every split gets at least one image, and the cuts stay inside the list.
    for k in range(len(cuts)):
        lo = (cuts[k - 1] if k else 0) + 1
        hi = n_img - (len(cuts) - k)
        cuts[k] = min(max(cuts[k], lo), hi)
    return cuts


def _polygons(rng: np.random.Generator, n: int, w: np.ndarray, h: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """``n`` convex-ish polygons (10-40 vertices) inside images of sizes ``w`` x ``h`` (arrays of length n).

    Returns the flat ``[x0, y0, x1, y1, ...]`` lists, the (n, 4) xywh bboxes and the areas (shoelace).
    """
    nv = rng.integers(10, 41, n)
    # Centre and radii: objects of very different sizes, like COCO (many small, some large).
    rel = np.exp(rng.uniform(np.log(0.03), np.log(0.45), n))
    rx = rel * w * rng.uniform(0.6, 1.0, n)
    ry = rel * h * rng.uniform(0.6, 1.0, n)
    cx = rng.uniform(0, 1, n) * w
    cy = rng.uniform(0, 1, n) * h
    owner = np.repeat(np.arange(n), nv)
    starts = np.concatenate([[0], np.cumsum(nv)[:-1]])
    k = np.arange(len(owner)) - starts[owner]
    theta = 2 * np.pi * (k + rng.uniform(0, 0.8, len(owner))) / nv[owner] + rng.uniform(0, 2 * np.pi, n)[owner]
    jitter = rng.uniform(0.75, 1.0, len(owner))
    x = np.clip(cx[owner] + rx[owner] * jitter * np.cos(theta), 0, w[owner] - 1)
    y = np.clip(cy[owner] + ry[owner] * jitter * np.sin(theta), 0, h[owner] - 1)
    x, y = np.round(x, 2), np.round(y, 2)
    x0 = np.minimum.reduceat(x, starts)
    y0 = np.minimum.reduceat(y, starts)
    bbox = np.stack([x0, y0, np.maximum.reduceat(x, starts) - x0, np.maximum.reduceat(y, starts) - y0], axis=1)
    nxt = np.arange(len(owner)) + 1
    nxt[np.cumsum(nv) - 1] = starts  # wrap around inside each polygon
    area = np.abs(np.add.reduceat(x * y[nxt] - x[nxt] * y, starts)) / 2
    flat = np.stack([x, y], axis=1).reshape(-1).tolist()
    bounds = np.concatenate([[0], np.cumsum(2 * nv)]).tolist()
    polys = [flat[bounds[i] : bounds[i + 1]] for i in range(n)]
    return polys, np.round(bbox, 2), np.round(area, 2)


def _crowd_rle(rng: np.random.Generator, w: int, h: int) -> tuple[dict, list[float], float]:
    """An uncompressed (``iscrowd``-style) RLE of an axis-aligned ellipse strictly inside a ``w`` x ``h`` image."""
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    ax, ay = rng.uniform(0.05, 0.25) * w, rng.uniform(0.05, 0.25) * h
    cols = np.arange(int(np.ceil(cx - ax)), int(cx + ax) + 1)
    half = ay * np.sqrt(np.clip(1 - ((cols - cx) / ax) ** 2, 0, None))
    y0 = np.clip(np.ceil(cy - half), 1, h - 2).astype(np.int64)
    y1 = np.clip(np.floor(cy + half) + 1, 2, h - 1).astype(np.int64)
    keep = y1 > y0
    cols, y0, y1 = cols[keep], y0[keep], y1[keep]
    # Column-major runs, starting with background: [bg, fg, bg, fg, ..., bg].
    edges = np.stack([cols * h + y0, cols * h + y1], axis=1).reshape(-1)
    counts = np.diff(np.concatenate([[0], edges, [w * h]])).tolist()
    bbox = [float(cols[0]), float(y0.min()), float(cols[-1] - cols[0] + 1), float(y1.max() - y0.min())]
    return {"counts": counts, "size": [h, w]}, bbox, float((y1 - y0).sum())


def generate_refer(
    root: Path,
    n_refs: int = 50000,
    sentences_per_ref: float = 2.84,
    n_images: int = 19994,
    n_anns: int = 196771,
    seed: int = 0,
    two_polygon_frac: float = 0.03,
    crowd_frac: float = 0.01,
) -> dict[str, Any]:
    """Write a REFER folder (``refs(unc).p`` + ``instances.json``) to ``root``; return what it holds.

    The result maps ``"splits"`` to ``{split: {"refs", "sentences", "images"}}`` (same keys as the summary
    of ``prepare``) and gives the totals and the list of image file names.
    """
    if not 1 <= n_refs <= n_anns:
        raise ValueError(f"need 1 <= refs <= anns, got refs={n_refs}, anns={n_anns}")
    if n_images > n_anns:
        raise ValueError(f"need images <= anns (every image has an annotation), got {n_images} > {n_anns}")
    if sentences_per_ref < 1:
        raise ValueError(f"sentences per ref must be >= 1, got {sentences_per_ref}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    # Images.
    image_ids = np.arange(1, n_images + 1) * 7 + 100000
    size_idx = rng.choice(len(IMAGE_SIZES), n_images, p=IMAGE_SIZE_P)
    img_w = np.array([IMAGE_SIZES[i][0] for i in size_idx])
    img_h = np.array([IMAGE_SIZES[i][1] for i in size_idx])
    file_names = [f"COCO_train2014_{int(i):012d}.jpg" for i in image_ids]
    images = [
        {"id": int(i), "file_name": f, "width": int(w), "height": int(h), "license": 1}
        for i, f, w, h in zip(image_ids, file_names, img_w, img_h)
    ]

    # Annotations: every image has at least one; ~crowd_frac are iscrowd RLEs, the rest polygons.
    ann_img = rng.permutation(np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_anns - n_images)]))
    ann_ids = np.arange(n_anns) + 1000
    ann_cat = rng.integers(1, NUM_CATEGORIES + 1, n_anns)
    is_crowd = rng.random(n_anns) < crowd_frac
    two = (rng.random(n_anns) < two_polygon_frac) & ~is_crowd
    poly_owner = np.concatenate([np.flatnonzero(~is_crowd), np.flatnonzero(two)])
    polys, pbox, parea = _polygons(rng, len(poly_owner), img_w[ann_img[poly_owner]], img_h[ann_img[poly_owner]])
    segs: list[Any] = [None] * n_anns
    bboxes: list[Any] = [None] * n_anns
    areas = [0.0] * n_anns
    pbox_l, parea_l = pbox.tolist(), parea.tolist()
    for p, a in enumerate(poly_owner.tolist()):
        if segs[a] is None:
            segs[a], bboxes[a], areas[a] = [polys[p]], pbox_l[p], parea_l[p]
        else:  # second polygon: union bbox, summed area
            segs[a].append(polys[p])
            b = bboxes[a]
            x0, y0 = min(b[0], pbox_l[p][0]), min(b[1], pbox_l[p][1])
            x1 = max(b[0] + b[2], pbox_l[p][0] + pbox_l[p][2])
            y1 = max(b[1] + b[3], pbox_l[p][1] + pbox_l[p][3])
            bboxes[a] = [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]
            areas[a] = round(areas[a] + parea_l[p], 2)
    for a in np.flatnonzero(is_crowd).tolist():
        segs[a], bboxes[a], areas[a] = _crowd_rle(rng, int(img_w[ann_img[a]]), int(img_h[ann_img[a]]))
    annotations = [
        {
            "id": int(ann_ids[a]),
            "image_id": int(image_ids[ann_img[a]]),
            "category_id": int(ann_cat[a]),
            "segmentation": segs[a],
            "area": areas[a],
            "bbox": bboxes[a],
            "iscrowd": int(is_crowd[a]),
        }
        for a in range(n_anns)
    ]
    categories = [{"id": c, "name": f"category{c}", "supercategory": "thing"} for c in range(1, NUM_CATEGORIES + 1)]

    # Refs: distinct annotations; splits assigned per image in RefCOCO proportions.
    ref_ann = np.sort(rng.choice(n_anns, n_refs, replace=False))
    ref_img = ann_img[ref_ann]
    ref_images, per_image = np.unique(ref_img, return_counts=True)
    order = rng.permutation(len(ref_images))
    cuts = _split_cuts(per_image[order], n_refs)
    image_split = np.empty(n_images, dtype=np.int64)
    for k, chunk in enumerate(np.split(ref_images[order], cuts)):
        image_split[chunk] = k
    ref_split = image_split[ref_img]

    # Sentences: floor(spr) each, one more for a random subset so the mean is sentences_per_ref.
    base = int(np.floor(sentences_per_ref))
    n_sent = int(round(n_refs * sentences_per_ref))
    n_sents = np.full(n_refs, base)
    n_sents[rng.choice(n_refs, n_sent - base * n_refs, replace=False)] += 1
    n_words = rng.integers(3, 11, n_sent)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), int(n_words.sum()))].tolist()
    word_bounds = np.concatenate([[0], np.cumsum(n_words)]).tolist()
    sent_bounds = np.concatenate([[0], np.cumsum(n_sents)]).tolist()

    refs = []
    for r in range(n_refs):
        a = int(ref_ann[r])
        sentences = []
        for s in range(sent_bounds[r], sent_bounds[r + 1]):
            tokens = words[word_bounds[s] : word_bounds[s + 1]]
            sent = " ".join(tokens)
            sentences.append({"tokens": tokens, "raw": sent.capitalize() + ".", "sent_id": s, "sent": sent})
        refs.append(
            {
                "sent_ids": list(range(sent_bounds[r], sent_bounds[r + 1])),
                "file_name": f"{file_names[ann_img[a]][:-4]}_{int(ann_ids[a])}.jpg",
                "ann_id": int(ann_ids[a]),
                "ref_id": r,
                "image_id": int(image_ids[ann_img[a]]),
                "split": SPLITS[ref_split[r]],
                "sentences": sentences,
                "category_id": int(ann_cat[a]),
            }
        )

    with open(root / f"refs({SPLIT_BY}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    with open(root / "instances.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)

    splits = {}
    for k, split in enumerate(SPLITS):
        mine = ref_split == k
        splits[split] = {
            "refs": int(mine.sum()),
            "sentences": int(n_sents[mine].sum()),
            "images": len(np.unique(ref_img[mine])),
        }
    return {
        "splits": splits,
        "refs": n_refs,
        "sentences": n_sent,
        "images": n_images,
        "anns": n_anns,
        "crowd_anns": int(is_crowd.sum()),
        "two_polygon_anns": int(two.sum()),
        "file_names": file_names,
    }


def make_stand_in_images(images_dir: Path, file_names: list[str]) -> None:
    """One empty file per image: ``prepare`` only checks that the referenced images exist."""
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    for name in file_names:
        (images_dir / name).touch()


def _generate_child(root: Path, images_dir: Path, kwargs: dict, result_path: Path) -> None:
    t0 = time.perf_counter()
    info = generate_refer(root, **kwargs)
    make_stand_in_images(images_dir, info.pop("file_names"))
    info["generate_s"] = round(time.perf_counter() - t0, 3)
    result_path.write_text(json.dumps(info))


def _rss_mb(who: int) -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(who).ru_maxrss * scale / 2**20, 1)


def _log(msg: str) -> None:
    print(f"[prepare_benchmark] {msg}", file=sys.stderr, flush=True)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from ris.data import prepare as prep
    from ris.data.refer import ReferDataset, annotation_rle, load_instances, load_refs

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ris_prepare_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    refer_dir, images_dir, out_dir = work / "refer", work / "images", work / "prepared"
    for d in (refer_dir, images_dir, out_dir):
        shutil.rmtree(d, ignore_errors=True)
    kwargs = {
        "n_refs": args.refs,
        "sentences_per_ref": args.sentences_per_ref,
        "n_images": args.images,
        "n_anns": args.anns,
        "seed": args.seed,
    }
    result_path = work / "generated.json"
    try:
        _log(f"generating {args.refs} refs / {args.anns} annotations / {args.images} images in {work}")
        ctx = multiprocessing.get_context("fork") if sys.platform != "win32" else multiprocessing.get_context()
        child = ctx.Process(target=_generate_child, args=(refer_dir, images_dir, kwargs, result_path))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"generator failed (exit code {child.exitcode})")
        gen = json.loads(result_path.read_text())
        sizes = {
            "refs_file_mb": round((refer_dir / f"refs({SPLIT_BY}).p").stat().st_size / 2**20, 1),
            "instances_mb": round((refer_dir / "instances.json").stat().st_size / 2**20, 1),
        }
        _log(f"generated in {gen['generate_s']} s ({sizes}); running prepare")

        t0 = time.perf_counter()
        summary = prep.prepare(refer_dir, SPLIT_BY, list(SPLITS), out_dir, images_dir)
        prepare_s = time.perf_counter() - t0
        _log(f"prepare: {prepare_s:.2f} s; timing the stages")

        stages: dict[str, float] = {}
        t = time.perf_counter()
        load_refs(refer_dir / f"refs({SPLIT_BY}).p")
        stages["load_refs_s"] = time.perf_counter() - t
        t = time.perf_counter()
        load_instances(refer_dir / "instances.json")
        stages["load_instances_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ds = ReferDataset.load(refer_dir, SPLIT_BY)
        stages["dataset_load_s"] = time.perf_counter() - t
        # RLE conversion alone: polygons/RLE -> compressed RLE, area, bbox, once per ref.
        from pycocotools import mask as mask_utils

        t = time.perf_counter()
        for ref in ds.refs:
            ann = ds.anns[int(ref["ann_id"])]
            img = ds.images[int(ref["image_id"])]
            rle = annotation_rle(ann["segmentation"], int(img["height"]), int(img["width"]))
            mask_utils.area(rle)
            mask_utils.toBbox(rle)
        stages["rle_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tables = {split: prep.split_table(ds, split) for split in SPLITS}
        stages["tables_s"] = time.perf_counter() - t  # includes the RLE conversion
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            for split, table in tables.items():
                table.to_parquet(Path(tmp) / f"{split}.parquet", index=False)
        stages["parquet_write_s"] = time.perf_counter() - t
        parquet_mb = sum(p.stat().st_size for p in out_dir.glob("*.parquet")) / 2**20

        expected = gen["splits"]
        return {
            "benchmark": "prepare",
            "prepare_s": round(prepare_s, 3),
            **{k: round(v, 3) for k, v in stages.items()},
            "generate_s": gen["generate_s"],
            "summary": summary,
            "counts_match": summary == expected,
            "refs": gen["refs"],
            "sentences": gen["sentences"],
            "images": gen["images"],
            "anns": gen["anns"],
            "crowd_anns": gen["crowd_anns"],
            "two_polygon_anns": gen["two_polygon_anns"],
            **sizes,
            "parquet_mb": round(parquet_mb, 1),
            "peak_rss_mb": _rss_mb(resource.RUSAGE_SELF),
            "generate_peak_rss_mb": _rss_mb(resource.RUSAGE_CHILDREN),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "seed": args.seed,
            "work_dir": str(work) if args.keep else None,
        }
    finally:
        if not args.keep:
            for d in (refer_dir, images_dir, out_dir):
                shutil.rmtree(d, ignore_errors=True)
            result_path.unlink(missing_ok=True)
            if not args.out:
                shutil.rmtree(work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--refs", type=int, default=50000, help="number of refs (default: RefCOCO's 50000)")
    p.add_argument("--sentences-per-ref", type=float, default=2.84, help="mean sentences per ref (default 2.84)")
    p.add_argument("--images", type=int, default=19994, help="number of images (default 19994)")
    p.add_argument("--anns", type=int, default=196771, help="annotations in instances.json (default 196771)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated and prepared files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result = run_benchmark(parse_args(argv))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
