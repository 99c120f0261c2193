"""What a run configuration (``ris train --run-config``) must hold, checked before anything is built.

``ris.config.run_config`` writes these from ``config.yaml``; a hand-written one that lacks a section or a
key gets one line naming it and what is expected, instead of a bare ``KeyError``.
"""

from __future__ import annotations

from typing import Any

from ris.catalog import check_run_settings
from ris.models.registry import catalog

__all__ = ["REQUIRED", "RunConfigError", "check_run_config"]

# section -> the keys training reads from it (None: a top-level value, not a section).
REQUIRED: dict[str, tuple[str, ...] | None] = {
    "run": None,
    "seed": None,
    "data": ("prepared_dir", "images_dir"),
    "model": ("method", "backbone", "size"),
    "train": ("image_size", "max_tokens", "epochs", "batch_size", "lr", "weight_decay"),
    "tracking": ("uri", "experiment", "tags"),
}


class RunConfigError(ValueError):
    """A run configuration lacks a section or a key training needs."""


def check_run_config(cfg: Any) -> None:
    """Raise :class:`RunConfigError` naming the first missing section or key and what is expected."""
    if not isinstance(cfg, dict):
        raise RunConfigError(f"run config: expected a JSON object with sections {', '.join(REQUIRED)}")
    for section, keys in REQUIRED.items():
        expected = ", ".join(f"{section}.{k}" for k in keys) if keys else "a value"
        if section not in cfg:
            raise RunConfigError(f"run config: missing section {section!r} (expected: {expected})")
        if keys is None:
            continue
        value = cfg[section]
        if not isinstance(value, dict):
            raise RunConfigError(f"run config: section {section!r} must be an object (expected: {expected})")
        missing = [k for k in keys if k not in value]
        if missing:
            raise RunConfigError(
                f"run config: section {section!r} misses {', '.join(f'{section}.{k}' for k in missing)} "
                f"(expected: {expected})"
            )
    micro = cfg["train"].get("micro_batch_size")
    if micro not in (None, "auto") and not (isinstance(micro, int) and not isinstance(micro, bool) and micro >= 1):
        raise RunConfigError(
            f"run config: train.micro_batch_size is {micro!r} (expected: an integer >= 1, auto or null)"
        )
    check_run_settings(cfg, catalog())  # every key and value against its declaration (ris.options), image size
