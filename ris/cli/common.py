"""What several sub-commands share: JSON arguments (text or a .json file), config.yaml, torch's threads.

Nothing here imports torch or a stage at module level: ``ris --help`` and the light jobs start fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: What ``ArgumentParser.add_subparsers()`` returns; each stage module adds its sub-commands to it.
Subparsers = argparse._SubParsersAction


def json_object(value: str) -> dict[str, Any]:
    """An argparse ``type``: a JSON object given as text, or as the path of a ``.json`` file (the DAG passes
    run configs and table specs as text; a person may prefer a file). Anything else is a usage error naming
    the argument (argparse adds its name), before any work starts."""
    if value.endswith(".json"):
        try:
            text, source = Path(value).read_text(), value
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror or e}") from None
    else:
        text, source = value, "JSON text"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        looks_like_a_path = source != value and not value.lstrip().startswith(("{", "["))
        hint = " (a file's name must end in .json)" if looks_like_a_path else ""
        raise argparse.ArgumentTypeError(f"{source}: not valid JSON ({e}){hint}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"{source}: expected a JSON object {{...}}, got {type(obj).__name__}")
    return obj


def load_config(path: str | Path) -> dict:
    """``config.yaml`` validated against the schema beside it (``workflow/schemas/config.schema.yaml``, when
    present), with ``results_dir`` and ``data_dir`` made relative to the file, as when Snakemake runs beside it."""
    from ris.config import load_yaml, validate

    path = Path(path)
    config = load_yaml(path)
    schema = path.parent / "workflow/schemas/config.schema.yaml"
    if schema.exists():
        validate(config, schema, source=str(path))
    for key in ("results_dir", "data_dir"):
        if key in config and not Path(config[key]).is_absolute():
            config[key] = str(path.resolve().parent / config[key])
    return config


def set_threads(threads: int) -> None:
    """torch's intra-op threads (0: its default). torch is imported by the commands that use it only: the
    table, plot and data jobs start ~1.5 s sooner without it."""
    if threads:
        import torch

        torch.set_num_threads(threads)
