"""Benchmark of ``ris.data.prepare.prepare`` on a generated REFER set of full RefCOCO size.

Requirement: full RefCOCO (~50,000 refs, ~142,000 sentences, 19,994 images, 196,771 annotations in
``instances.json``, polygon segmentations, images around 640x480) prepares in well under two minutes on a
2-core machine. No real data is needed: this script generates a REFER folder of that size
deterministically (``ris.data.fake_refer.generate_refer``, ``numpy`` seeded), then times ``prepare`` end to end
and its stages separately.

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
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ris.data.fake_refer import SPLIT_BY, SPLITS, generate_refer, make_stand_in_images


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
