"""Seeded generator of a synthetic referring-segmentation dataset in the REFER format (as RefCOCO).

Why: the pipeline (loading, training, evaluation, tables) must be testable end to end in CPU minutes
without downloading COCO. This module draws flat-coloured shapes on a plain background and writes

* ``refs(unc).p``     - pickled list of plain ref dicts, exactly the fields of RefCOCO's refs file;
* ``instances.json``  - COCO-style images / annotations (polygon, or compressed RLE of the visible part of
  an occluded object) / categories, one annotation per drawn object;
* ``images/*.png``    - lossless images whose pixels match the annotations exactly;
* ``specs.json``      - extra: ``sent_id -> semantic spec`` of every sentence (see :func:`resolve`);
* ``objects.json``    - extra: ``ann_id -> attributes`` (shape, colour, size, rgb, full polygon, draw order).

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
import math
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
SPLIT_BY = "unc"
REFS_FILE = f"refs({SPLIT_BY}).p"

#: Shape families, like RefCOCO's people (testA) / non-people (testB). Order fixes the category ids.
FAMILY_A = "roundish"
FAMILY_B = "angular"
FAMILIES: dict[str, tuple[str, ...]] = {
    FAMILY_A: ("circle", "hexagon", "diamond"),
    FAMILY_B: ("square", "triangle", "star"),
}
SHAPES: tuple[str, ...] = FAMILIES[FAMILY_A] + FAMILIES[FAMILY_B]
SHAPE_FAMILY: dict[str, str] = {s: fam for fam, shapes in FAMILIES.items() for s in shapes}
CATEGORY_IDS: dict[str, int] = {s: i + 1 for i, s in enumerate(SHAPES)}
SPLIT_FAMILY: dict[str, str | None] = {"train": None, "val": None, "testA": FAMILY_A, "testB": FAMILY_B}

#: Saturated, well separated colours; the background is a mid grey far from all of them.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 205, 30),
    "purple": (150, 50, 190),
    "cyan": (30, 200, 210),
}
BACKGROUND: tuple[int, int, int] = (118, 118, 118)
TEXTURE_DARKEN = 0.78  # textured objects alternate stripes of colour and colour * TEXTURE_DARKEN
BACKGROUND_NOISE = 6  # +- uniform noise of the background when textures are on

SIZES: tuple[str, ...] = ("small", "large")
#: Base radius range in pixels at 128 px; scaled linearly with the image size.
RADIUS_RANGE: dict[str, tuple[float, float]] = {"small": (13.0, 17.0), "large": (24.0, 30.0)}
REF_IMAGE_SIZE = 128

SUPERLATIVES: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
#: Margins (fraction of the image size) of the superlative and relation predicates of resolve().
SUPERLATIVE_MARGIN = 0.05
RELATION_MARGIN = 0.06
RELATION_SLOPE = 1.5  # "left of" also needs |dy| <= slope * dx, i.e. roughly to the left
#: A generated spec must resolve to the target under all these margin scales (robust to small shifts).
ROBUST_SCALES: tuple[float, ...] = (0.5, 1.0, 1.5)

STRATEGIES: tuple[str, ...] = ("attribute", "superlative", "relation")
STRATEGY_WEIGHTS: tuple[float, ...] = (0.5, 0.25, 0.25)

# --- surface forms (every word here is in vocabulary()) -------------------------------------------------
_SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
_GENERIC_NOUNS: tuple[str, ...] = ("object", "shape")
_SUPERLATIVE_PHRASES: dict[str, tuple[str, ...]] = {
    "leftmost": ("on the far left", "furthest to the left"),
    "rightmost": ("on the far right", "furthest to the right"),
    "topmost": ("at the very top", "closest to the top"),
    "bottommost": ("at the very bottom", "closest to the bottom"),
}
_RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
_FUNCTION_WORDS: tuple[str, ...] = ("the", "a", "an", "that", "is", "and", "in")

Spec = dict[str, Any]


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic dataset; the same config always yields byte-identical files."""

    seed: int = 0
    image_size: int = 128
    num_images: dict[str, int] = field(
        default_factory=lambda: {"train": 400, "val": 60, "testA": 40, "testB": 40}
    )
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
            raise ValueError(
                f"SyntheticConfig.objects_per_image must be (min, max), got {self.objects_per_image}"
            )
        lo, hi = self.objects_per_image
        if not 2 <= lo <= hi <= 8:
            raise ValueError(
                "SyntheticConfig.objects_per_image must satisfy 2 <= min <= max <= 8, "
                f"got {self.objects_per_image}"
            )
        if not 1 <= self.sentences_per_ref <= 10:
            raise ValueError(
                f"SyntheticConfig.sentences_per_ref must be in [1, 10], got {self.sentences_per_ref}"
            )
        if not 1 <= self.refs_per_image <= 8:
            raise ValueError(f"SyntheticConfig.refs_per_image must be in [1, 8], got {self.refs_per_image}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticConfig:
        """Build a config from a plain mapping (e.g. YAML); unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(
                f"unknown SyntheticConfig key(s): {', '.join(unknown)}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["objects_per_image"] = list(self.objects_per_image)
        return d


# ======================================================================================================
# Vocabulary and semantics
# ======================================================================================================


def vocabulary() -> list[str]:
    """Every word that can appear in a ``sent`` (sorted); small on purpose so tiny models can learn it."""
    words: set[str] = set(_FUNCTION_WORDS) | set(COLORS) | set(SHAPES) | set(_GENERIC_NOUNS)
    words |= set(SUPERLATIVES)
    for group in (_SIZE_WORDS, _SUPERLATIVE_PHRASES, _RELATION_PHRASES):
        for phrases in group.values():
            for phrase in phrases:
                words.update(phrase.split())
    return sorted(words)


def object_position(bbox: Sequence[float], width: int, height: int) -> tuple[float, float]:
    """Normalised (x, y) centre of a COCO bbox ``[x, y, w, h]``: the position resolve() reasons about."""
    x, y, w, h = (float(v) for v in bbox)
    return (x + w / 2.0) / float(width), (y + h / 2.0) / float(height)


def _matches(spec: Mapping[str, Any], obj: Mapping[str, Any]) -> bool:
    return all(spec.get(k) is None or obj[k] == spec[k] for k in ("shape", "color", "size"))


def _relation_holds(
    obj: Mapping[str, Any], landmark: Mapping[str, Any], direction: str, scale: float
) -> bool:
    dx = float(obj["x"]) - float(landmark["x"])
    dy = float(obj["y"]) - float(landmark["y"])
    primary, secondary = {
        "left": (-dx, dy),
        "right": (dx, dy),
        "above": (-dy, dx),
        "below": (dy, dx),
    }[direction]
    return primary > RELATION_MARGIN * scale and abs(secondary) <= primary * RELATION_SLOPE / scale


_SUPERLATIVE_KEYS: dict[str, tuple[str, float]] = {
    "leftmost": ("x", 1.0),
    "rightmost": ("x", -1.0),
    "topmost": ("y", 1.0),
    "bottommost": ("y", -1.0),
}


def resolve(
    spec: Mapping[str, Any], objects: Sequence[Mapping[str, Any]], margin_scale: float = 1.0
) -> list[int]:
    """Indices of the objects that a semantic spec refers to (the expression is unique iff one index).

    ``spec``: ``{"shape", "color", "size"}`` (each a value or None = any), ``"superlative"`` (None or one of
    SUPERLATIVES) and ``"relation"`` (None or ``{"direction": one of DIRECTIONS, "landmark": spec}``).
    ``objects``: mappings with ``shape``, ``color``, ``size`` and normalised centre ``x``, ``y`` (y down).

    Semantics: keep objects matching the attributes; with a relation, the landmark must resolve to exactly
    one object, which is excluded, and candidates must lie in ``direction`` of it by more than
    ``RELATION_MARGIN`` (and roughly along that axis); with a superlative, keep the candidates within
    ``SUPERLATIVE_MARGIN`` of the extreme one (ties make the expression ambiguous). ``margin_scale``
    multiplies both margins (the generator checks several scales for robustness).
    """
    cands = [i for i, o in enumerate(objects) if _matches(spec, o)]
    relation = spec.get("relation")
    if relation:
        landmarks = resolve(relation["landmark"], objects, margin_scale)
        if len(landmarks) != 1:
            return []
        lm = objects[landmarks[0]]
        cands = [
            i
            for i in cands
            if i != landmarks[0] and _relation_holds(objects[i], lm, relation["direction"], margin_scale)
        ]
    superlative = spec.get("superlative")
    if superlative and cands:
        key, sign = _SUPERLATIVE_KEYS[superlative]
        values = [sign * float(objects[i][key]) for i in cands]
        limit = min(values) + SUPERLATIVE_MARGIN * margin_scale
        cands = [i for i, v in zip(cands, values, strict=True) if v <= limit]
    return cands


def _attr_spec(shape: str | None, color: str | None, size: str | None) -> Spec:
    return {"shape": shape, "color": color, "size": size, "superlative": None, "relation": None}


def _n_attrs(spec: Mapping[str, Any]) -> int:
    return sum(spec.get(k) is not None for k in ("shape", "color", "size"))


def _attr_combos(obj: Mapping[str, Any]) -> list[Spec]:
    """All attribute-only specs true of ``obj`` (including the empty one), fewest attributes first."""
    combos = [
        _attr_spec(shape, color, size)
        for shape in (obj["shape"], None)
        for color in (obj["color"], None)
        for size in (obj["size"], None)
    ]
    return sorted(combos, key=_n_attrs)


def _robust_unique(spec: Spec, objects: Sequence[Mapping[str, Any]], target: int) -> bool:
    return all(resolve(spec, objects, s) == [target] for s in ROBUST_SCALES)


def candidate_specs(objects: Sequence[Mapping[str, Any]], target: int) -> dict[str, list[Spec]]:
    """For each strategy, the *simplest* specs (fewest attributes) that robustly resolve to ``target``."""
    obj = objects[target]
    combos = _attr_combos(obj)
    found: dict[str, list[tuple[int, Spec]]] = {s: [] for s in STRATEGIES}
    for c in combos:
        if _n_attrs(c) and _robust_unique(c, objects, target):
            found["attribute"].append((_n_attrs(c), c))
        if len(resolve(c, objects)) < 2:
            continue  # a superlative or relation must be needed: the head alone has to be ambiguous
        for sup in SUPERLATIVES:
            spec = dict(c, superlative=sup)
            if _robust_unique(spec, objects, target):
                found["superlative"].append((_n_attrs(c), spec))
    # Landmarks: other objects with their simplest unique attribute description.
    landmarks: list[Spec] = []
    for j, other in enumerate(objects):
        if j == target:
            continue
        unique = [c for c in _attr_combos(other) if _n_attrs(c) and resolve(c, objects) == [j]]
        if unique:
            fewest = _n_attrs(unique[0])
            landmarks.extend(c for c in unique if _n_attrs(c) == fewest)
    for c in combos:
        if len(resolve(c, objects)) < 2:
            continue
        for lm in landmarks:
            for direction in DIRECTIONS:
                spec = dict(c, relation={"direction": direction, "landmark": lm})
                if _robust_unique(spec, objects, target):
                    found["relation"].append((_n_attrs(c) + _n_attrs(lm), spec))
    out: dict[str, list[Spec]] = {}
    for strategy, items in found.items():
        if items:
            fewest = min(cost for cost, _ in items)
            out[strategy] = [spec for cost, spec in items if cost == fewest]
    return out


# ======================================================================================================
# Surface realisation
# ======================================================================================================


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(
    spec: Mapping[str, Any], rng: np.random.Generator, article: bool, allow_pred: bool = True
) -> str:
    """'the small red circle' / 'red circle' / 'the circle in red' / 'the shape that is small and red'."""
    size = _choice(rng, _SIZE_WORDS[spec["size"]]) if spec.get("size") else None
    color = spec.get("color")
    noun = spec.get("shape") or _choice(rng, _GENERIC_NOUNS)
    adjs = [w for w in (size, color) if w]
    forms = ["adj"]
    if color:
        forms.append("in")
    if adjs and article and allow_pred:
        forms.append("pred")
    form = _choice(rng, forms)
    if form == "in":
        words = [size, noun, "in", color] if size else [noun, "in", color]
    elif form == "pred":
        words = [noun, "that", "is", " and ".join(adjs)]
    else:
        words = [*adjs, noun]
    if article:
        det = "the"
        if form == "pred" and rng.random() < 0.5:
            det = "an" if noun[0] in "aeiou" else "a"
        words = [det, *words]
    return " ".join(w for w in words if w)


def realise(spec: Mapping[str, Any], rng: np.random.Generator) -> str:
    """One lower-case sentence (space-separated tokens) expressing ``spec``, with a random paraphrase."""
    article = bool(rng.random() < 0.75)
    superlative = spec.get("superlative")
    relation = spec.get("relation")
    if superlative:
        head = _attr_spec(spec.get("shape"), spec.get("color"), spec.get("size"))
        if rng.random() < 0.5:
            adjs = [_choice(rng, _SIZE_WORDS[head["size"]]) if head["size"] else None, head["color"]]
            noun = head["shape"] or _choice(rng, _GENERIC_NOUNS)
            words = ["the" if article else None, superlative, *adjs, noun]
            return " ".join(w for w in words if w)
        np_words = _noun_phrase(head, rng, article=article, allow_pred=False)
        return f"{np_words} {_choice(rng, _SUPERLATIVE_PHRASES[superlative])}"
    if relation:
        head_spec = _attr_spec(spec.get("shape"), spec.get("color"), spec.get("size"))
        head = _noun_phrase(head_spec, rng, article, allow_pred=False)
        rel = _choice(rng, _RELATION_PHRASES[relation["direction"]])
        if article and rng.random() < 0.3:
            rel = f"that is {rel}"
        landmark = _noun_phrase(relation["landmark"], rng, article=article, allow_pred=False)
        return f"{head} {rel} {landmark}"
    return _noun_phrase(spec, rng, article)


def _raw_form(sent: str, rng: np.random.Generator) -> str:
    """A 'raw' annotator string: optional capital letter and full stop, as in RefCOCO's ``raw``."""
    raw = sent[0].upper() + sent[1:] if rng.random() < 0.5 else sent
    return raw + "." if rng.random() < 0.3 else raw


def _normalise(raw: str) -> str:
    return " ".join(raw.lower().replace(".", " ").replace(",", " ").split())


# ======================================================================================================
# Scene layout and rendering
# ======================================================================================================


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[float]:
    """Outline of a shape as a flat COCO polygon [x1, y1, x2, y2, ...] (2-decimal floats, exact in JSON)."""
    if shape == "circle":
        pts = [(r, 2 * math.pi * k / 32) for k in range(32)]
    elif shape == "square":
        pts = [(r, math.pi / 4 + math.pi / 2 * k) for k in range(4)]
    elif shape == "diamond":
        pts = [(r * 1.1, math.pi / 2 * k) for k in range(4)]
    elif shape == "hexagon":
        pts = [(r, math.pi / 3 * k) for k in range(6)]
    elif shape == "triangle":
        big = r * 1.25
        cy = cy + big / 4.0  # centre the bbox vertically
        pts = [(big, -math.pi / 2 + 2 * math.pi / 3 * k) for k in range(3)]
    elif shape == "star":
        big = r * 1.2
        pts = [(big if k % 2 == 0 else big * 0.5, -math.pi / 2 + math.pi / 5 * k) for k in range(10)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    flat: list[float] = []
    for rad, ang in pts:
        flat.append(round(cx + rad * math.cos(ang), 2))
        flat.append(round(cy + rad * math.sin(ang), 2))
    return flat


def _extent(poly: Sequence[float], cx: float, cy: float) -> float:
    return max(math.hypot(poly[i] - cx, poly[i + 1] - cy) for i in range(0, len(poly), 2))


def _poly_rle(poly: list[float], size: int) -> dict:
    return mask_utils.merge(mask_utils.frPyObjects([poly], size, size))


@dataclass
class _Object:
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    radius: float
    polygon: list[float]
    extent: float
    mask: np.ndarray | None = None  # full decoded polygon mask (bool)
    visible: np.ndarray | None = None  # visible part after later objects are drawn (bool)


def _pool(rng: np.random.Generator, names: Sequence[str]) -> list[str]:
    """A random subset of 2-4 names: repeats within an image make attributes alone often insufficient."""
    k = int(rng.integers(2, 5))
    return [names[int(i)] for i in rng.choice(len(names), size=k, replace=False)]


def _sample_shapes(rng: np.random.Generator, n: int, family: str | None) -> list[str]:
    pool = _pool(rng, SHAPES)
    shapes = [_choice(rng, pool) for _ in range(n)]
    if family is not None:
        # Test images need >= 2 objects of the family so that expressions must discriminate within it.
        members = [s for s in pool if SHAPE_FAMILY[s] == family] or list(FAMILIES[family])
        while sum(SHAPE_FAMILY[s] == family for s in shapes) < 2:
            idx = [i for i, s in enumerate(shapes) if SHAPE_FAMILY[s] != family]
            shapes[idx[int(rng.integers(len(idx)))]] = _choice(rng, members)
    return shapes


def _layout(rng: np.random.Generator, cfg: SyntheticConfig, family: str | None) -> list[_Object] | None:
    """Random objects placed without overlap (or with partial overlap if occlusion); None if it failed."""
    size_px = cfg.image_size
    scale = size_px / REF_IMAGE_SIZE
    gap = 2.0 * scale
    lo, hi = cfg.objects_per_image
    n = int(rng.integers(lo, hi + 1))
    shapes = _sample_shapes(rng, n, family)
    colors = _pool(rng, tuple(COLORS))
    objects: list[_Object] = []
    for shape in shapes:
        size = _choice(rng, SIZES)
        rlo, rhi = RADIUS_RANGE[size]
        radius = float(rng.uniform(rlo, rhi)) * scale
        color = _choice(rng, colors)
        # Bounding radius around the nominal centre (+1 px for rasterisation), used for spacing and borders.
        extent = _extent(_polygon(shape, 0.0, 0.0, radius), 0.0, 0.0) + 1.0
        if 2 * extent + 2 > size_px:
            return None
        placed = False
        for _ in range(200):
            if cfg.occlusion and objects and rng.random() < 0.5:
                other = objects[int(rng.integers(len(objects)))]
                ang = float(rng.uniform(0, 2 * math.pi))
                dist = float(rng.uniform(0.55, 0.9)) * (extent + other.extent)
                cx, cy = other.cx + dist * math.cos(ang), other.cy + dist * math.sin(ang)
                inside = extent + 1 <= min(cx, cy) and max(cx, cy) <= size_px - 1 - extent
                if not inside:
                    continue
                # Overlapping objects of one colour would merge into a single blob: keep those apart.
                if any(
                    o.color == color and math.hypot(cx - o.cx, cy - o.cy) < extent + o.extent + gap
                    for o in objects
                ):
                    continue
            else:
                cx = float(rng.uniform(extent + 1, size_px - 1 - extent))
                cy = float(rng.uniform(extent + 1, size_px - 1 - extent))
                if any(math.hypot(cx - o.cx, cy - o.cy) < extent + o.extent + gap for o in objects):
                    continue
            placed = True
            break
        if not placed:
            return None
        poly = _polygon(shape, cx, cy, radius)
        objects.append(_Object(shape, color, size, cx, cy, radius, poly, extent))
    # Rasterise with pycocotools, so that pixels == decoded annotations, and compute visible parts.
    covered = np.zeros((size_px, size_px), dtype=bool)
    for obj in objects:
        obj.mask = mask_utils.decode(_poly_rle(obj.polygon, size_px)).astype(bool)
    for obj in reversed(objects):
        assert obj.mask is not None
        obj.visible = obj.mask & ~covered
        covered |= obj.mask
        full, vis = int(obj.mask.sum()), int(obj.visible.sum())
        if full == 0 or vis < 0.5 * full:
            return None  # too occluded to be a fair target
    return objects


def _render(rng: np.random.Generator, cfg: SyntheticConfig, objects: Sequence[_Object]) -> np.ndarray:
    """Paint the decoded masks in draw order over the background (optionally striped / noisy)."""
    s = cfg.image_size
    img = np.empty((s, s, 3), dtype=np.int16)
    img[:] = BACKGROUND
    if cfg.textures:
        img += rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1, size=(s, s, 1), dtype=np.int16)
    yy, xx = np.mgrid[0:s, 0:s]
    for obj in objects:
        assert obj.mask is not None
        rgb = np.array(COLORS[obj.color], dtype=np.int16)
        if cfg.textures:
            coord = (xx, yy, xx + yy, xx - yy)[int(rng.integers(4))]
            half = int(rng.integers(2, 4))
            dark = ((coord // half) % 2 == 0) & obj.mask
            light = obj.mask & ~dark
            img[light] = rgb
            img[dark] = np.round(rgb * TEXTURE_DARKEN).astype(np.int16)
        else:
            img[obj.mask] = rgb
    return np.clip(img, 0, 255).astype(np.uint8)


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
        raw = _raw_form(sent, rng)
        out.append((raw, _normalise(raw), spec, strategy))
    return out if len(out) == n else None


def _scene_dicts(objects: Sequence[_Object], bboxes: Sequence[Sequence[float]], size: int) -> list[Spec]:
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
        objects = _layout(rng, cfg, family)
        if objects is None:
            continue
        anns: list[dict[str, Any]] = []
        for k, obj in enumerate(objects):
            assert obj.mask is not None and obj.visible is not None
            if np.array_equal(obj.visible, obj.mask):
                segmentation: Any = [obj.polygon]
                rle = _poly_rle(obj.polygon, size)
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
        pixels = _render(rng, cfg, objects)
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
