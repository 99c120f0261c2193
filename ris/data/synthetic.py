"""Seeded generator of a synthetic referring-segmentation dataset in the REFER format (as RefCOCO).

Why: the pipeline (loading, training, evaluation, tables) must be testable end to end in CPU minutes
without downloading COCO. This module draws flat-coloured shapes on a plain background and writes

* ``refs(unc).p``     - pickled list of plain ref dicts, exactly the fields of RefCOCO's refs file;
* ``instances.json``  - COCO-style images / annotations (polygon, or compressed RLE of the visible part of
  an occluded object) / categories, one annotation per drawn object;
* ``images/*.png``    - lossless images whose pixels match the annotations exactly;
* ``specs.json``      - extra: ``sent_id -> semantic spec`` of every sentence (see :func:`resolve`);
* ``objects.json``    - extra: ``ann_id -> attributes`` (shape, colour, size, rgb, full polygon, draw order).

The generator's parts: :mod:`ris.data.scene` (the world of shapes, colours and sizes; layout and painting),
:mod:`ris.data.expressions` (semantic specs, :func:`resolve`, surface realisation, expression types) and this
module (the config, one image's refs and sentences, writing the dataset). The public names of both parts are
re-exported here, so ``ris.data.synthetic`` stays the generator's one entry point.

Every sentence is generated from a *semantic spec* (attributes, optional superlative, optional spatial
relation to a landmark) that :func:`resolve` evaluates against the objects of the image; only specs that
resolve to exactly the target (robustly, under tighter and looser margins) are kept. Positions used by
:func:`resolve` are centres of the annotation bboxes (:func:`object_position`), normalised to [0, 1].

Like RefCOCO's people / non-people split, shapes form two disjoint families: ``testA`` refs target only
family A, ``testB`` refs only family B; ``train``/``val`` refs target both.

Everything is deterministic: image ``i`` of split ``s`` is drawn from ``default_rng([seed, s, i])``, so
changing one split's size does not change any other split; ids are derived from (split, index) too.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ris.data.expressions import (
    DIRECTIONS,
    EXPRESSION_TYPES,
    RELATION_MARGIN,
    RELATION_SLOPE,
    ROBUST_SCALES,
    STRATEGIES,
    STRATEGY_WEIGHTS,
    SUPERLATIVE_MARGIN,
    SUPERLATIVES,
    Spec,
    candidate_specs,
    expression_type,
    normalise,
    object_position,
    raw_form,
    realise,
    resolve,
    vocabulary,
)
from ris.data.scene import (
    BACKGROUND,
    COLORS,
    FAMILIES,
    FAMILY_A,
    FAMILY_B,
    RADIUS_RANGE,
    SHAPE_FAMILY,
    SHAPES,
    SIZES,
    SceneObject,
    layout,
    polygon_rle,
    render,
)
from ris.utils import reject_unknown_fields

__all__ = [
    "BACKGROUND", "CATEGORY_IDS", "COLORS", "DIRECTIONS", "EXPRESSION_TYPES", "FAMILIES", "FAMILY_A", "FAMILY_B",
    "RADIUS_RANGE", "REFS_FILE", "RELATION_MARGIN", "RELATION_SLOPE", "ROBUST_SCALES", "SHAPES", "SHAPE_FAMILY",
    "SIZES", "SPLITS", "SPLIT_FAMILY", "STRATEGIES", "STRATEGY_WEIGHTS", "SUPERLATIVES", "SUPERLATIVE_MARGIN",
    "Spec", "SyntheticConfig", "candidate_specs", "expression_type", "object_position", "realise", "resolve",
    "synthesize", "vocabulary",
]  # fmt: skip

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
SPLIT_BY = "unc"
REFS_FILE = f"refs({SPLIT_BY}).p"
CATEGORY_IDS: dict[str, int] = {s: i + 1 for i, s in enumerate(SHAPES)}
SPLIT_FAMILY: dict[str, str | None] = {"train": None, "val": None, "testA": FAMILY_A, "testB": FAMILY_B}


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic dataset; the same config always yields byte-identical files."""

    seed: int = 0
    image_size: int = 128
    num_images: dict[str, int] = field(default_factory=lambda: {"train": 400, "val": 60, "testA": 40, "testB": 40})
    objects_per_image: tuple[int, int] = (3, 5)
    sentences_per_ref: int = 3
    refs_per_image: int = 2
    occlusion: bool = False
    textures: bool = False

    def __post_init__(self) -> None:
        self.objects_per_image = tuple(int(v) for v in self.objects_per_image)  # type: ignore[assignment]
        self.num_images = {str(k): int(v) for k, v in dict(self.num_images).items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field if the config cannot be generated."""
        if int(self.seed) < 0:
            raise ValueError(f"SyntheticConfig.seed must be >= 0, got {self.seed}")
        if not 48 <= int(self.image_size) <= 1024:
            raise ValueError(f"SyntheticConfig.image_size must be in [48, 1024], got {self.image_size}")
        for split, n in self.num_images.items():
            if split not in SPLITS:
                raise ValueError(f"SyntheticConfig.num_images: unknown split {split!r}; expected {SPLITS}")
            if not 0 <= n <= 99_999:
                raise ValueError(f"SyntheticConfig.num_images[{split!r}] must be in [0, 99999], got {n}")
        if len(self.objects_per_image) != 2:
            raise ValueError(f"SyntheticConfig.objects_per_image must be (min, max), got {self.objects_per_image}")
        lo, hi = self.objects_per_image
        if not 2 <= lo <= hi <= 8:
            raise ValueError(
                f"SyntheticConfig.objects_per_image must satisfy 2 <= min <= max <= 8, got {self.objects_per_image}"
            )
        if not 1 <= self.sentences_per_ref <= 10:
            raise ValueError(f"SyntheticConfig.sentences_per_ref must be in [1, 10], got {self.sentences_per_ref}")
        if not 1 <= self.refs_per_image <= 8:
            raise ValueError(f"SyntheticConfig.refs_per_image must be in [1, 8], got {self.refs_per_image}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticConfig:
        """Build a config from a plain mapping (e.g. YAML); unknown keys are an error naming the key."""
        reject_unknown_fields(cls, d, "SyntheticConfig")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["objects_per_image"] = list(self.objects_per_image)
        return d


# ======================================================================================================
# Dataset assembly
# ======================================================================================================


def _image_id(split: str, index: int) -> int:
    return SPLITS.index(split) * 100_000 + index + 1


def _make_sentences(
    rng: np.random.Generator, specs: dict[str, list[Spec]], n: int
) -> list[tuple[str, str, Spec, str]] | None:
    """``n`` distinct (raw, sent, spec, strategy) for one target, or None if that many cannot be made."""
    available = [s for s in STRATEGIES if s in specs]
    if not available:
        return None
    weights = np.array([STRATEGY_WEIGHTS[STRATEGIES.index(s)] for s in available], dtype=float)
    weights /= weights.sum()
    out: list[tuple[str, str, Spec, str]] = []
    seen: set[str] = set()
    for _ in range(30 * n):
        if len(out) == n:
            break
        strategy = available[int(rng.choice(len(available), p=weights))]
        options = specs[strategy]
        spec = options[int(rng.integers(len(options)))]
        sent = realise(spec, rng)
        if sent in seen:
            continue
        seen.add(sent)
        raw = raw_form(sent, rng)
        out.append((raw, normalise(raw), spec, strategy))
    return out if len(out) == n else None


def _scene_dicts(objects: Sequence[SceneObject], bboxes: Sequence[Sequence[float]], size: int) -> list[Spec]:
    dicts = []
    for obj, bbox in zip(objects, bboxes, strict=True):
        x, y = object_position(bbox, size, size)
        dicts.append({"shape": obj.shape, "color": obj.color, "size": obj.size, "x": x, "y": y})
    return dicts


def _generate_image(cfg: SyntheticConfig, split: str, index: int) -> dict[str, Any]:
    """Everything about one image: pixels, annotations, refs, specs (pure function of cfg/split/index)."""
    rng = np.random.default_rng([int(cfg.seed), SPLITS.index(split), index])
    family = SPLIT_FAMILY[split]
    image_id = _image_id(split, index)
    file_name = f"synthetic_{image_id:06d}.png"
    size = cfg.image_size
    for _attempt in range(100):
        objects = layout(rng, cfg.image_size, cfg.objects_per_image, cfg.occlusion, family)
        if objects is None:
            continue
        anns: list[dict[str, Any]] = []
        for k, obj in enumerate(objects):
            assert obj.mask is not None and obj.visible is not None
            if np.array_equal(obj.visible, obj.mask):
                segmentation: Any = [obj.polygon]
                rle = polygon_rle(obj.polygon, size)
            else:
                rle = mask_utils.encode(np.asfortranarray(obj.visible.astype(np.uint8)))
                segmentation = {"size": [size, size], "counts": rle["counts"].decode("ascii")}
            anns.append(
                {
                    "id": image_id * 100 + k,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[obj.shape],
                    "segmentation": segmentation,
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(round(float(v), 2)) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
        scene = _scene_dicts(objects, [a["bbox"] for a in anns], size)
        eligible = [i for i, o in enumerate(objects) if family is None or SHAPE_FAMILY[o.shape] == family]
        order = [eligible[int(i)] for i in rng.permutation(len(eligible))]
        refs: list[dict[str, Any]] = []
        specs_out: dict[str, Spec] = {}
        strategies: list[str] = []
        for target in order:
            if len(refs) == cfg.refs_per_image:
                break
            sentences = _make_sentences(rng, candidate_specs(scene, target), cfg.sentences_per_ref)
            if sentences is None:
                continue
            ref_id = image_id * 100 + len(refs)
            sent_objs = []
            for s_idx, (raw, sent, spec, strategy) in enumerate(sentences):
                sent_id = ref_id * 10 + s_idx
                sent_objs.append({"tokens": sent.split(), "raw": raw, "sent": sent, "sent_id": sent_id})
                specs_out[str(sent_id)] = spec
                strategies.append(strategy)
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": anns[target]["id"],
                    "image_id": image_id,
                    "split": split,
                    "category_id": CATEGORY_IDS[objects[target].shape],
                    "file_name": file_name,
                    "sent_ids": [s["sent_id"] for s in sent_objs],
                    "sentences": sent_objs,
                }
            )
        if not refs:
            continue
        pixels = render(rng, objects, cfg.image_size, cfg.textures)
        meta = {
            str(a["id"]): {
                "image_id": image_id,
                "shape": o.shape,
                "color": o.color,
                "size": o.size,
                "rgb": list(COLORS[o.color]),
                "polygon": o.polygon,
                "draw_order": k,
            }
            for k, (a, o) in enumerate(zip(anns, objects, strict=True))
        }
        return {
            "image": {"id": image_id, "file_name": file_name, "width": size, "height": size},
            "pixels": pixels,
            "annotations": anns,
            "refs": refs,
            "specs": specs_out,
            "objects": meta,
            "strategies": strategies,
        }
    raise RuntimeError(f"could not generate image {index} of split {split!r} with config {cfg}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def synthesize(out_dir: Path, cfg: SyntheticConfig | None = None) -> dict[str, Any]:
    """Write the synthetic REFER dataset to ``out_dir`` and return counts.

    Files are written atomically (temp name + ``os.replace``); ``refs(unc).p`` is written last, so its
    presence marks a complete dataset.
    """
    cfg = cfg or SyntheticConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    refs: list[dict] = []
    specs: dict[str, Spec] = {}
    objects: dict[str, dict] = {}
    summary: dict[str, Any] = {
        "images": {},
        "refs": {},
        "sentences": 0,
        "annotations": 0,
        "rle_annotations": 0,
        "strategies": {s: 0 for s in STRATEGIES},
    }
    for split in SPLITS:
        n = cfg.num_images.get(split, 0)
        n_refs = 0
        for index in range(n):
            item = _generate_image(cfg, split, index)
            _atomic_write(out_dir / "images" / item["image"]["file_name"], _png_bytes(item["pixels"]))
            images.append(item["image"])
            annotations.extend(item["annotations"])
            refs.extend(item["refs"])
            specs.update(item["specs"])
            objects.update(item["objects"])
            n_refs += len(item["refs"])
            for strategy in item["strategies"]:
                summary["strategies"][strategy] += 1
        summary["images"][split] = n
        summary["refs"][split] = n_refs
    summary["sentences"] = len(specs)
    summary["annotations"] = len(annotations)
    summary["rle_annotations"] = sum(isinstance(a["segmentation"], dict) for a in annotations)
    categories = [{"id": CATEGORY_IDS[s], "name": s, "supercategory": SHAPE_FAMILY[s]} for s in SHAPES]
    instances = {
        "info": {
            "description": "ris synthetic referring segmentation dataset (REFER format)",
            "version": "1",
            "config": cfg.to_dict(),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    _atomic_write(out_dir / "instances.json", _json_bytes(instances))
    _atomic_write(out_dir / "specs.json", _json_bytes(specs))
    colors = {k: list(v) for k, v in COLORS.items()}
    extra = {"background": list(BACKGROUND), "colors": colors, "objects": objects}
    _atomic_write(out_dir / "objects.json", _json_bytes(extra))
    _atomic_write(out_dir / REFS_FILE, pickle.dumps(refs, protocol=4))
    return summary
