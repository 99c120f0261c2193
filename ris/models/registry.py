"""One registry of everything a run is built from, keyed by the names used in ``config.yaml``.

``METHODS``, ``BACKBONES`` and ``TEXT_ENCODERS`` map a name (the Snakemake wildcard) to a builder;
``BACKBONE_STRIDES`` maps a backbone to the multiple its input side must be. Adding a method means one new
module in ``ris/models/`` decorated with ``@register_method("name")`` (its options declared in the class's
``OPTIONS``) and one import line in ``ris/models/__init__.py``. :mod:`ris.catalog` reads the same
declarations from the sources, without torch, for planning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ris.catalog import Catalog, Method

F = TypeVar("F", bound=Callable)

METHODS: dict[str, Callable] = {}
BACKBONES: dict[str, Callable] = {}
TEXT_ENCODERS: dict[str, Callable] = {}
BACKBONE_STRIDES: dict[str, int] = {}


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = fn
        return fn

    return deco


def register_method(name: str) -> Callable[[F], F]:
    """Register a model class (built as ``cls(cfg: ModelConfig)``) under a method name."""
    return _register(METHODS, "method", name)


def register_backbone(name: str, stride: int) -> Callable[[F], F]:
    """Register ``fn(size, image_size, pretrained) -> StagedBackbone`` under a backbone name; ``stride``: its
    output stride, which the input side must be a multiple of (every stage then halves the map exactly)."""
    BACKBONE_STRIDES[name] = stride
    return _register(BACKBONES, "backbone", name)


def register_text_encoder(name: str) -> Callable[[F], F]:
    """Register ``fn(size, vocab_size, pretrained) -> TextEncoder`` under a text-encoder name."""
    return _register(TEXT_ENCODERS, "text encoder", name)


def lookup(table: dict[str, Callable], kind: str, name: str) -> Callable:
    """The builder registered under ``name``, or a clear error listing the known names."""
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


def catalog() -> Catalog:
    """The registry as a :class:`ris.catalog.Catalog` (what ``ris train`` checks a run config against); equal to
    :func:`ris.catalog.read_catalog`, which reads the same from the sources (tests/test_options.py)."""
    methods = {
        name: Method(name, cls.__module__.replace(".", "/") + ".py", cls.__name__, tuple(cls.OPTIONS))
        for name, cls in METHODS.items()
    }
    return Catalog(methods, dict(BACKBONE_STRIDES), tuple(sorted(TEXT_ENCODERS)))
