"""Models: backbones, text encoders, shared blocks and one module per method, tied by one registry.

Importing this package registers every entry; ``build_model(cfg)`` builds one by name.
"""

from ris.models import backbones, coupalign, eavl, jmceln, lavt, text  # noqa: F401  (registration side effects)
from ris.models.base import ModelConfig, RISModel
from ris.models.registry import BACKBONES, METHODS, TEXT_ENCODERS, lookup


def build_model(cfg: ModelConfig) -> RISModel:
    """The registered method ``cfg.method`` built from ``cfg``."""
    return lookup(METHODS, "method", cfg.method)(cfg)


__all__ = ["BACKBONES", "METHODS", "TEXT_ENCODERS", "ModelConfig", "RISModel", "build_model"]
