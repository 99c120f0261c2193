"""Fake REFER data: RefCOCO-shaped files (``refs(<split_by>).p``, COCO-style ``instances.json``, images) that are
generated, not downloaded. Torch-free (NumPy, Pillow, pycocotools) and deterministic for a seed.

Two uses:

* :func:`generate_refer`: one REFER folder of full RefCOCO size (~50,000 refs, 196,771 annotations, polygons of
  10-40 vertices, ~3% with two polygons, ~1% ``iscrowd`` RLEs, images around 640x480) for the benchmarks of the
  data path (``benchmarks/prepare_benchmark.py``, ``benchmarks/data_path.py``); the images are empty stand-ins
  (:func:`make_stand_in_images`) or drawn by the caller.
* :func:`write_copy`: the rehearsal's copy of the paper data (``rehearsal: true`` in config.yaml, rule
  ``rehearsal_data``, docs/scales.md): every REFER folder and partition of ``datasets:`` (refcoco unc and google,
  refcoco+ unc, refcocog umd and google) with a handful of images per split, laid out as a user's own copy is
  (``paper_data.refer_root`` holding ``refcoco/``, ``refcoco+/``, ``refcocog/``; ``paper_data.coco_images``
  holding ``COCO_train2014_*.jpg``). Its images are real JPEGs of COCO-like sizes in which every annotated
  object is painted with its decoded mask, so images, masks and sentences ("the red dog on the left") agree.
"""

from __future__ import annotations

import copy
import json
import pickle
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ris.data.refer import annotation_rle, select_split
from ris.data.scene import COLORS
from ris.utils import atomic_path, reject_unknown_fields

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


def _union_bbox(a: list[float], b: list[float]) -> list[float]:
    """The xywh box around two xywh boxes (2 decimals)."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]


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
            bboxes[a] = _union_bbox(bboxes[a], pbox_l[p])
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


# --- the rehearsal's copy of the paper data -------------------------------------------------------------------

#: COCO category ids and names of the copy's objects (a few of COCO's 80).
COPY_CATEGORIES: dict[int, str] = {1: "person", 3: "car", 18: "dog", 19: "horse", 28: "umbrella", 44: "bottle",
                                   62: "chair", 88: "teddy bear"}  # fmt: skip
#: Sentence templates of the copy: colour, category and where the object's centre is (left, middle, right).
TEMPLATES = ("the {colour} {category} {where}", "{colour} {category}", "{category} {where}",
             "a {colour} {category} {where} of the picture")  # fmt: skip
WHERE = ("on the left", "in the middle", "on the right")


@dataclass(frozen=True)
class CopySettings:
    """How much the rehearsal's copy holds (config.yaml ``rehearsal_slice.data``).

    Every partition gives ``eval_images`` images to each of its evaluated splits (val, testA, ...) and the rest
    of the pool, at least ``train_images``, to train; all folders share one pool of images and annotations, as
    RefCOCO, RefCOCO+ and RefCOCOg share COCO train2014.
    """

    seed: int = 0
    train_images: int = 4
    eval_images: int = 1
    objects_per_image: tuple[int, int] = (3, 5)
    refs_per_image: int = 2
    sentences_per_ref: tuple[int, int] = (1, 2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CopySettings:
        """From a plain mapping (config.yaml); an unknown key or a bad value is an error naming the field."""
        reject_unknown_fields(cls, d, "rehearsal_slice.data")
        s = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        for name in ("objects_per_image", "sentences_per_ref"):
            lo, hi = getattr(s, name)
            if not 1 <= lo <= hi:
                raise ValueError(
                    f"rehearsal_slice.data.{name}: expected [min, max] with 1 <= min <= max, got {[lo, hi]}"
                )
        if not 1 <= s.refs_per_image <= s.objects_per_image[0]:
            raise ValueError(
                f"rehearsal_slice.data.refs_per_image: expected 1..objects_per_image[0] ({s.objects_per_image[0]}), "
                f"got {s.refs_per_image}"
            )
        if s.train_images < 1 or s.eval_images < 1:
            raise ValueError("rehearsal_slice.data: train_images and eval_images must be >= 1")
        return s


def ref_labels(splits: Sequence[str]) -> list[str]:
    """The ``split`` values the refs of a partition carry besides ``train``: its evaluated splits, where ``test``
    is no label of its own when testA/testB are listed (REFER's ``test`` is then their union)."""
    labels = [s for s in splits if s != "train"]
    if any(s in ("testA", "testB", "testC") for s in labels):
        labels = [s for s in labels if s != "test"]
    return labels


def _image_pool(rng: np.random.Generator, n: int) -> list[dict]:
    """``n`` COCO-like image records (ids, file names, sizes around 640x480)."""
    size_idx = rng.choice(len(IMAGE_SIZES), n, p=IMAGE_SIZE_P)
    ids = [100000 + 7 * (i + 1) for i in range(n)]
    return [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": IMAGE_SIZES[k][0],
         "height": IMAGE_SIZES[k][1], "license": 1}
        for i, k in zip(ids, size_idx.tolist())
    ]  # fmt: skip


def _objects(rng: np.random.Generator, images: list[dict], s: CopySettings) -> list[dict]:
    """Annotations of every image: ``objects_per_image`` polygons (the first object of every third image with
    two), an unreferred ``iscrowd`` RLE in every fourth image; each with a category and the colour it is painted."""
    anns: list[dict] = []
    colours = sorted(COLORS)
    for i, im in enumerate(images):
        w, h = im["width"], im["height"]
        k = int(rng.integers(s.objects_per_image[0], s.objects_per_image[1] + 1))
        polys, boxes, areas = _polygons(rng, k, np.full(k, w), np.full(k, h))
        for j in range(k):
            seg, box, area = [polys[j]], boxes[j].tolist(), float(areas[j])
            if j == 0 and i % 3 == 1:
                p2, b2, a2 = _polygons(rng, 1, np.array([w]), np.array([h]))
                seg, box, area = seg + p2, _union_bbox(box, b2[0].tolist()), round(area + float(a2[0]), 2)
            anns.append({"segmentation": seg, "bbox": box, "area": area, "iscrowd": 0, "image_id": im["id"]})
        if i % 4 == 2:
            rle, box, area = _crowd_rle(rng, w, h)
            anns.append({"segmentation": rle, "bbox": box, "area": area, "iscrowd": 1, "image_id": im["id"]})
    for n, a in enumerate(anns):
        a["id"] = 2000 + n
        a["category_id"] = int(rng.choice(sorted(COPY_CATEGORIES)))
        a["colour"] = colours[int(rng.integers(len(colours)))]
    return anns


def _sentence(rng: np.random.Generator, ann: dict, width: int) -> str:
    x, _, w, _ = ann["bbox"]
    where = WHERE[min(2, int(3 * (x + w / 2) / width))]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(colour=ann["colour"], category=COPY_CATEGORIES[ann["category_id"]], where=where)


def _refs(rng: np.random.Generator, images: list[dict], anns: list[dict], s: CopySettings) -> list[dict]:
    """``refs_per_image`` refs per image (distinct non-crowd objects), each with its sentences; no split yet."""
    refs: list[dict] = []
    sent_id = 0
    for im in images:
        mine = [a for a in anns if a["image_id"] == im["id"] and not a["iscrowd"]]
        for a in (mine[int(j)] for j in rng.choice(len(mine), s.refs_per_image, replace=False)):
            sentences = []
            for _ in range(int(rng.integers(s.sentences_per_ref[0], s.sentences_per_ref[1] + 1))):
                sent = _sentence(rng, a, im["width"])
                sentences.append({"tokens": sent.split(), "raw": sent.capitalize(), "sent_id": sent_id, "sent": sent})
                sent_id += 1
            refs.append({
                "sent_ids": [x["sent_id"] for x in sentences], "file_name": f"{im['file_name'][:-4]}_{a['id']}.jpg",
                "ann_id": a["id"], "ref_id": len(refs), "image_id": im["id"], "split": None,
                "sentences": sentences, "category_id": a["category_id"],
            })  # fmt: skip
    return refs


def _assign_splits(rng: np.random.Generator, images: list[dict], splits: Sequence[str], eval_images: int) -> dict:
    """Image id -> split label of one partition: ``eval_images`` images per evaluated split, the rest train."""
    order = [images[int(i)]["id"] for i in rng.permutation(len(images))]
    out = dict.fromkeys(order, "train")
    for k, label in enumerate(ref_labels(splits)):
        out.update(dict.fromkeys(order[k * eval_images : (k + 1) * eval_images], label))
    return out


def paint(rng: np.random.Generator, image: dict, anns: list[dict]) -> Image.Image:
    """A photo-like picture (smooth colour field, noise) with every object painted over its decoded mask, the
    largest first so that small objects stay visible; crowd regions are grey."""
    w, h = image["width"], image["height"]
    coarse = rng.integers(60, 200, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    for a in sorted(anns, key=lambda a: -a["area"]):
        mask = mask_utils.decode(annotation_rle(a["segmentation"], h, w)).astype(bool)
        pixels[mask] = (128, 128, 128) if a["iscrowd"] else COLORS[a["colour"]]
    pixels += rng.integers(-8, 9, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_copy(
    refer_root: Path, images_dir: Path, partitions: Mapping[str, Mapping[str, Sequence[str]]], settings: CopySettings
) -> dict[str, Any]:
    """Write the rehearsal's REFER copy: ``<refer_root>/<folder>/{instances.json, refs(<split_by>).p}`` for every
    ``partitions[folder][split_by]`` (its dataset's splits) and the JPEGs under ``images_dir``.

    Returns ``{folder: {split_by: {split: {"refs", "sentences", "images"}}}}`` (the keys of ``ris prepare``'s summary).
    """
    s = settings
    need = max((len(ref_labels(splits)) for parts in partitions.values() for splits in parts.values()), default=0)
    rng = np.random.default_rng(s.seed)
    images = _image_pool(rng, s.train_images + need * s.eval_images)
    anns = _objects(rng, images, s)
    for im in images:
        with atomic_path(Path(images_dir) / im["file_name"]) as tmp:
            paint(rng, im, [a for a in anns if a["image_id"] == im["id"]]).save(tmp, "JPEG", quality=90)
    instances = {
        "images": images,
        "annotations": [{k: v for k, v in a.items() if k != "colour"} for a in anns],
        "categories": [{"id": c, "name": n, "supercategory": "thing"} for c, n in COPY_CATEGORIES.items()],
    }
    summary: dict[str, Any] = {}
    for folder, parts in partitions.items():
        frng = np.random.default_rng([s.seed, zlib.crc32(folder.encode())])
        refs = _refs(frng, images, anns, s)
        with atomic_path(Path(refer_root) / folder / "instances.json") as tmp:
            tmp.write_text(json.dumps(instances))
        for split_by, splits in parts.items():
            where = _assign_splits(frng, images, splits, s.eval_images)
            mine = [{**copy.deepcopy(r), "split": where[r["image_id"]]} for r in refs]
            with atomic_path(Path(refer_root) / folder / f"refs({split_by}).p") as tmp:
                tmp.write_bytes(pickle.dumps(mine, protocol=2))
            summary.setdefault(folder, {})[split_by] = {
                split: {"refs": len(sel), "sentences": sum(len(r["sentences"]) for r in sel),
                        "images": len({r["image_id"] for r in sel})}
                for split in splits
                for sel in [select_split(mine, split)]
            }  # fmt: skip
    return summary


def partitions_of(datasets: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """``folder -> split_by -> splits`` of config.yaml's REFER datasets (``source: refer``)."""
    out: dict[str, dict[str, list[str]]] = {}
    for d in datasets.values():
        if d.get("source") == "refer":
            out.setdefault(d["folder"], {})[d["split_by"]] = list(d["splits"])
    return out
