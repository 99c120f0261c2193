"""The generator's referring language: what a sentence means (a *semantic spec*), when it names exactly one
object (:func:`resolve`), how it is said (:func:`realise`), and which kind of expression it is
(:func:`expression_type`). Part of the generator, :mod:`ris.data.synthetic`.

A spec is ``{"shape", "color", "size"}`` (each a value or None = any), ``"superlative"`` (None or one of
SUPERLATIVES) and ``"relation"`` (None or ``{"direction": one of DIRECTIONS, "landmark": spec}``); the
generator writes one per sentence to ``specs.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ris.data.scene import COLORS, SHAPES, choice

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


def _relation_holds(obj: Mapping[str, Any], landmark: Mapping[str, Any], direction: str, scale: float) -> bool:
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


def resolve(spec: Mapping[str, Any], objects: Sequence[Mapping[str, Any]], margin_scale: float = 1.0) -> list[int]:
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


def _noun_phrase(spec: Mapping[str, Any], rng: np.random.Generator, article: bool, allow_pred: bool = True) -> str:
    """'the small red circle' / 'red circle' / 'the circle in red' / 'the shape that is small and red'."""
    size = choice(rng, _SIZE_WORDS[spec["size"]]) if spec.get("size") else None
    color = spec.get("color")
    noun = spec.get("shape") or choice(rng, _GENERIC_NOUNS)
    adjs = [w for w in (size, color) if w]
    forms = ["adj"]
    if color:
        forms.append("in")
    if adjs and article and allow_pred:
        forms.append("pred")
    form = choice(rng, forms)
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
            adjs = [choice(rng, _SIZE_WORDS[head["size"]]) if head["size"] else None, head["color"]]
            noun = head["shape"] or choice(rng, _GENERIC_NOUNS)
            words = ["the" if article else None, superlative, *adjs, noun]
            return " ".join(w for w in words if w)
        np_words = _noun_phrase(head, rng, article=article, allow_pred=False)
        return f"{np_words} {choice(rng, _SUPERLATIVE_PHRASES[superlative])}"
    if relation:
        head_spec = _attr_spec(spec.get("shape"), spec.get("color"), spec.get("size"))
        head = _noun_phrase(head_spec, rng, article, allow_pred=False)
        rel = choice(rng, _RELATION_PHRASES[relation["direction"]])
        if article and rng.random() < 0.3:
            rel = f"that is {rel}"
        landmark = _noun_phrase(relation["landmark"], rng, article=article, allow_pred=False)
        return f"{head} {rel} {landmark}"
    return _noun_phrase(spec, rng, article)


def raw_form(sent: str, rng: np.random.Generator) -> str:
    """A 'raw' annotator string: optional capital letter and full stop, as in RefCOCO's ``raw``."""
    raw = sent[0].upper() + sent[1:] if rng.random() < 0.5 else sent
    return raw + "." if rng.random() < 0.3 else raw


def normalise(raw: str) -> str:
    """The tokenised form of a raw string (lower case, no punctuation), as RefCOCO's ``sent``."""
    return " ".join(raw.lower().replace(".", " ").replace(",", " ").split())


# ======================================================================================================
# Expression types
# ======================================================================================================

#: The kinds of expression the generator produces, as :func:`expression_type` labels them (one per sentence):
#:
#: * ``shape``: the shape word alone names the object ("the star", "hexagon");
#: * ``colour``: the colour alone, with a generic noun ("the red object", "shape in blue");
#: * ``size``: the size alone, with a generic noun ("the small shape", "big object");
#: * ``several attributes``: two or three of shape, colour and size ("the large red circle");
#: * ``superlative``: an extreme position among the objects matching the attributes ("the leftmost circle",
#:   "the object at the very top");
#: * ``relation``: a position relative to another object, the landmark ("the circle left of the blue star").
#:
#: A sentence with a relation is ``relation`` and one with a superlative ``superlative`` whatever its
#: attributes (the generator never combines the two); the others are labelled by their attributes.
EXPRESSION_TYPES: tuple[str, ...] = ("shape", "colour", "size", "several attributes", "superlative", "relation")
_SINGLE_ATTRIBUTE_TYPE: dict[str, str] = {"shape": "shape", "color": "colour", "size": "size"}


def expression_type(spec: Mapping[str, Any]) -> str:
    """The :data:`EXPRESSION_TYPES` label of a semantic spec (as in ``specs.json``).

    Raises ValueError naming the expected fields for a mapping that is not a spec, or for an attribute-only
    spec without any attribute (the generator writes none: it would name every object).
    """
    if not isinstance(spec, Mapping) or not {"shape", "color", "size"} <= set(spec):
        raise ValueError(f"not a semantic spec (expected a mapping with shape, color, size): {spec!r}")
    if spec.get("relation"):
        return "relation"
    if spec.get("superlative"):
        return "superlative"
    present = [k for k in ("shape", "color", "size") if spec.get(k) is not None]
    if not present:
        raise ValueError(f"semantic spec without attribute, superlative or relation: {spec!r}")
    return _SINGLE_ATTRIBUTE_TYPE[present[0]] if len(present) == 1 else "several attributes"
