"""Reader of the REFER format (RefCOCO, RefCOCO+, RefCOCOg and our synthetic set).

A REFER dataset folder holds ``refs(<splitBy>).p`` (a pickled list of ref dicts) and ``instances.json``
(COCO-style images, annotations with polygon or RLE segmentations, categories). Split selection follows
the public REFER API (``refer.py``, ``getRefIds``): ``testA``/``testB``/``testC`` take every ref whose
split *contains* that letter, ``test`` every ref whose split contains "test", ``train``/``val`` (and the
two-letter ``testAB``...) an exact match.

Pickles are untrusted input: :func:`load_refs` unpickles with an allow-list that admits only plain
containers and scalars, so a malicious file cannot execute code.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


class ReferFormatError(ValueError):
    """A REFER file is missing, unreadable or has an unexpected structure (message names file/field)."""


# The one global a plain-data pickle may name: protocols 0-2 store ``bytes`` as ``_codecs.encode(str)``.
_ALLOWED_GLOBALS = {("_codecs", "encode")}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that refuses global lookups: only dict/list/tuple/str/bytes/numbers/bool/None load."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="utf-8", errors="replace")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise ReferFormatError(
            f"{self._path}: refusing to unpickle {module}.{name}; a REFER refs file may contain only plain "
            "containers and scalars (this file is corrupt or malicious)"
        )


def safe_unpickle(path: Path) -> Any:
    """Load a pickle that may hold only plain containers and scalars; raise ReferFormatError otherwise."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _PlainUnpickler(f, path).load()
    except ReferFormatError:
        raise
    except FileNotFoundError:
        raise ReferFormatError(f"{path}: refs file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ReferFormatError(f"{path}: not a readable refs pickle ({type(e).__name__}: {e})") from None


REF_FIELDS = ("ref_id", "ann_id", "image_id", "split", "sentences")
SENT_FIELDS = ("sent_id", "sent")
ANN_FIELDS = ("id", "image_id", "segmentation")
IMAGE_FIELDS = ("id", "file_name", "width", "height")


def select_split(refs: list[dict], split: str) -> list[dict]:
    """Refs of one split, with the semantics of the public REFER API's ``getRefIds(split=...)``."""
    if split in ("testA", "testB", "testC"):
        return [r for r in refs if split[-1] in r["split"]]
    if split in ("testAB", "testBC", "testAC"):
        return [r for r in refs if r["split"] == split]
    if split == "test":
        return [r for r in refs if "test" in r["split"]]
    if split in ("train", "val"):
        return [r for r in refs if r["split"] == split]
    raise ValueError(f"unknown REFER split {split!r}; expected train, val, test, testA, testB, testC")


def _require(obj: Any, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise ReferFormatError(f"{where}: expected a dict, got {type(obj).__name__}")
    missing = [f for f in fields if f not in obj]
    if missing:
        raise ReferFormatError(f"{where}: missing field(s) {', '.join(missing)}")


def load_refs(path: Path) -> list[dict]:
    """Load and check a ``refs(<splitBy>).p`` file."""
    refs = safe_unpickle(path)
    if not isinstance(refs, list):
        raise ReferFormatError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        _require(ref, REF_FIELDS, f"{path}: ref #{i}")
        if not isinstance(ref["sentences"], list) or not ref["sentences"]:
            raise ReferFormatError(f"{path}: ref #{i} (ref_id {ref['ref_id']}): field 'sentences' is empty")
        for j, s in enumerate(ref["sentences"]):
            _require(s, SENT_FIELDS, f"{path}: ref #{i} (ref_id {ref['ref_id']}) sentence #{j}")
    return refs


def load_instances(path: Path) -> dict:
    """Load and check a COCO-style ``instances.json`` (images, annotations, categories)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ReferFormatError(f"{path}: instances file not found") from None
    except json.JSONDecodeError as e:
        raise ReferFormatError(f"{path}: not valid JSON ({e})") from None
    _require(data, ("images", "annotations"), str(path))
    for key, fields in (("images", IMAGE_FIELDS), ("annotations", ANN_FIELDS)):
        for i, item in enumerate(data[key]):
            _require(item, fields, f"{path}: {key}[{i}]")
    return data


def annotation_rle(segmentation: Any, height: int, width: int) -> dict:
    """One compressed RLE for an annotation's segmentation (polygons, uncompressed or compressed RLE).

    Several polygons of one annotation are merged by union: pixels covered by two polygons are
    foreground (pycocotools' ``annToRLE`` does the same; LAVT's loader turns them into background).
    """
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        rle = {
            "size": list(segmentation["size"]),
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    else:
        raise ReferFormatError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return rle


def decode_rle(counts: str | bytes, height: int, width: int) -> np.ndarray:
    """Decode a compressed RLE string into a (H, W) uint8 mask."""
    rle = {
        "size": [int(height), int(width)],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }
    return mask_utils.decode(rle)


@dataclass
class ReferDataset:
    """A REFER dataset folder: refs, images and annotations indexed by id."""

    refs: list[dict]
    images: dict[int, dict]
    anns: dict[int, dict]
    categories: dict[int, str]
    refs_path: Path
    instances_path: Path

    @classmethod
    def load(cls, folder: Path, split_by: str) -> ReferDataset:
        folder = Path(folder)
        refs_path = folder / f"refs({split_by}).p"
        instances_path = folder / "instances.json"
        refs = load_refs(refs_path)
        inst = load_instances(instances_path)
        images = {int(im["id"]): im for im in inst["images"]}
        anns = {int(a["id"]): a for a in inst["annotations"]}
        cats = {int(c["id"]): str(c.get("name", c["id"])) for c in inst.get("categories", [])}
        for i, ref in enumerate(refs):
            if int(ref["ann_id"]) not in anns:
                raise ReferFormatError(
                    f"{refs_path}: ref #{i} (ref_id {ref['ref_id']}) points at ann_id {ref['ann_id']}, "
                    f"which is not in {instances_path}"
                )
            if int(ref["image_id"]) not in images:
                raise ReferFormatError(
                    f"{refs_path}: ref #{i} (ref_id {ref['ref_id']}) points at image_id {ref['image_id']}, "
                    f"which is not in {instances_path}"
                )
        return cls(refs, images, anns, cats, refs_path, instances_path)

    def split(self, split: str) -> list[dict]:
        return select_split(self.refs, split)
