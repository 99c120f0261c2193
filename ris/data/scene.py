"""The synthetic world and its pictures: which shapes, colours and sizes exist, and how a scene of them is laid
out and painted (part of the generator, :mod:`ris.data.synthetic`).

Objects are flat-coloured polygons on a plain grey background; they are rasterised with pycocotools, so the
painted pixels equal the decoded annotations exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

#: Shape families, like RefCOCO's people (testA) / non-people (testB). Order fixes the category ids.
FAMILY_A = "roundish"
FAMILY_B = "angular"
FAMILIES: dict[str, tuple[str, ...]] = {
    FAMILY_A: ("circle", "hexagon", "diamond"),
    FAMILY_B: ("square", "triangle", "star"),
}
SHAPES: tuple[str, ...] = FAMILIES[FAMILY_A] + FAMILIES[FAMILY_B]
SHAPE_FAMILY: dict[str, str] = {s: fam for fam, shapes in FAMILIES.items() for s in shapes}

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


def choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, drawn with ``rng`` (the generator's single way to pick a word or attribute)."""
    return options[int(rng.integers(len(options)))]


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


def polygon_rle(poly: list[float], size: int) -> dict:
    return mask_utils.merge(mask_utils.frPyObjects([poly], size, size))


@dataclass
class SceneObject:
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
    shapes = [choice(rng, pool) for _ in range(n)]
    if family is not None:
        # Test images need >= 2 objects of the family so that expressions must discriminate within it.
        members = [s for s in pool if SHAPE_FAMILY[s] == family] or list(FAMILIES[family])
        while sum(SHAPE_FAMILY[s] == family for s in shapes) < 2:
            idx = [i for i, s in enumerate(shapes) if SHAPE_FAMILY[s] != family]
            shapes[idx[int(rng.integers(len(idx)))]] = choice(rng, members)
    return shapes


def layout(
    rng: np.random.Generator,
    image_size: int,
    objects_per_image: tuple[int, int],
    occlusion: bool,
    family: str | None,
) -> list[SceneObject] | None:
    """Random objects placed without overlap (or with partial overlap if occlusion); None if it failed."""
    size_px = image_size
    scale = size_px / REF_IMAGE_SIZE
    gap = 2.0 * scale
    lo, hi = objects_per_image
    n = int(rng.integers(lo, hi + 1))
    shapes = _sample_shapes(rng, n, family)
    colors = _pool(rng, tuple(COLORS))
    objects: list[SceneObject] = []
    for shape in shapes:
        size = choice(rng, SIZES)
        rlo, rhi = RADIUS_RANGE[size]
        radius = float(rng.uniform(rlo, rhi)) * scale
        color = choice(rng, colors)
        # Bounding radius around the nominal centre (+1 px for rasterisation), used for spacing and borders.
        extent = _extent(_polygon(shape, 0.0, 0.0, radius), 0.0, 0.0) + 1.0
        if 2 * extent + 2 > size_px:
            return None
        placed = False
        for _ in range(200):
            if occlusion and objects and rng.random() < 0.5:
                other = objects[int(rng.integers(len(objects)))]
                ang = float(rng.uniform(0, 2 * math.pi))
                dist = float(rng.uniform(0.55, 0.9)) * (extent + other.extent)
                cx, cy = other.cx + dist * math.cos(ang), other.cy + dist * math.sin(ang)
                inside = extent + 1 <= min(cx, cy) and max(cx, cy) <= size_px - 1 - extent
                if not inside:
                    continue
                # Overlapping objects of one colour would merge into a single blob: keep those apart.
                if any(
                    o.color == color and math.hypot(cx - o.cx, cy - o.cy) < extent + o.extent + gap for o in objects
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
        objects.append(SceneObject(shape, color, size, cx, cy, radius, poly, extent))
    # Rasterise with pycocotools, so that pixels == decoded annotations, and compute visible parts.
    covered = np.zeros((size_px, size_px), dtype=bool)
    for obj in objects:
        obj.mask = mask_utils.decode(polygon_rle(obj.polygon, size_px)).astype(bool)
    for obj in reversed(objects):
        assert obj.mask is not None
        obj.visible = obj.mask & ~covered
        covered |= obj.mask
        full, vis = int(obj.mask.sum()), int(obj.visible.sum())
        if full == 0 or vis < 0.5 * full:
            return None  # too occluded to be a fair target
    return objects


def render(rng: np.random.Generator, objects: Sequence[SceneObject], image_size: int, textures: bool) -> np.ndarray:
    """Paint the decoded masks in draw order over the background (optionally striped / noisy)."""
    s = image_size
    img = np.empty((s, s, 3), dtype=np.int16)
    img[:] = BACKGROUND
    if textures:
        img += rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1, size=(s, s, 1), dtype=np.int16)
    yy, xx = np.mgrid[0:s, 0:s]
    for obj in objects:
        assert obj.mask is not None
        rgb = np.array(COLORS[obj.color], dtype=np.int16)
        if textures:
            coord = (xx, yy, xx + yy, xx - yy)[int(rng.integers(4))]
            half = int(rng.integers(2, 4))
            dark = ((coord // half) % 2 == 0) & obj.mask
            light = obj.mask & ~dark
            img[light] = rgb
            img[dark] = np.round(rgb * TEXTURE_DARKEN).astype(np.int16)
        else:
            img[obj.mask] = rgb
    return np.clip(img, 0, 255).astype(np.uint8)
