"""One registry of everything a run is built from, keyed by the names used in ``config.yaml``.

``METHODS``, ``BACKBONES`` and ``TEXT_ENCODERS`` map a name (the Snakemake wildcard) to a builder.
Adding a method means one new module in ``ris/models/`` decorated with ``@register_method("name")``
and one import line in ``ris/models/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

METHODS: dict[str, Callable] = {}
BACKBONES: dict[str, Callable] = {}
TEXT_ENCODERS: dict[str, Callable] = {}


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


def register_backbone(name: str) -> Callable[[F], F]:
    """Register ``fn(size, image_size, pretrained) -> StagedBackbone`` under a backbone name."""
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
