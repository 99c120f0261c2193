"""Helpers shared by the benchmark scripts: the machine a figure came from, Markdown tables, the paper model's
config, and the official LAVT model built from a yz93/LAVT-RIS checkout (read at run time, never vendored)."""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys
import types
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BERT_VOCAB = 30522  # bert-base-uncased


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | None = None) -> str:
    """One line naming the machine: CPU model and count, torch threads, OMP_NUM_THREADS, GPU, torch version."""
    parts = [
        f"{cpu_name()} x {os.cpu_count()} CPUs",
        f"torch threads {torch.get_num_threads()}",
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
    ]
    if device is not None and device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    parts.append(f"torch {torch.__version__}, Python {platform.python_version()}")
    return ", ".join(parts)


def markdown(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def paper_model_config(method: str, backbone: str, image_size: int = 480, num_masks: int = 0):
    """The paper preset's ``ModelConfig`` of a run (options from config.yaml), random init, BERT-base vocabulary.

    Random init: nothing is downloaded, and a step costs the same as with the pretrained weights.
    """
    from ris.config import RunKey, load_yaml, run_config
    from ris.models import ModelConfig

    config = load_yaml(REPO / "config.yaml")
    config["scale"] = "paper"
    model = run_config(config, RunKey("refcoco", method, backbone, num_masks, 0))["model"]
    model.update(image_size=image_size, vocab_size=BERT_VOCAB, pretrained_backbone=False, pretrained_text=None)
    return ModelConfig.from_dict(model)


def import_official(root: Path) -> types.ModuleType:
    """``lib.segmentation`` of an official LAVT-RIS checkout (read from ``root`` at run time, never copied:
    the code is GPL-3.0). Its two folders ``lib`` and ``bert`` are registered as the packages of those names
    (``sys.modules``, no ``sys.path`` edit), so ``lib``'s ``from bert.modeling_bert import ...`` finds them too.

    Its ``lib/backbone.py`` imports mmcv and mmseg only to load ImageNet weights and get a logger; where they
    are not installed, stand-ins for those two names are registered (random init needs neither).
    """
    root = Path(root)
    if not (root / "lib" / "segmentation.py").is_file() or not (root / "bert" / "modeling_bert.py").is_file():
        raise FileNotFoundError(f"{root}: not a yz93/LAVT-RIS checkout (no lib/segmentation.py, bert/modeling_bert.py)")
    for name in ("lib", "bert"):  # folders without __init__.py: a package is a module with a __path__
        package = types.ModuleType(name)
        package.__path__ = [str(root / name)]
        sys.modules[name] = package
    if importlib.util.find_spec("mmseg") is None:
        utils = types.ModuleType("mmseg.utils")
        utils.get_root_logger = lambda *a, **k: logging.getLogger("lavt_official")  # type: ignore[attr-defined]
        sys.modules["mmseg"] = types.ModuleType("mmseg")
        sys.modules["mmseg.utils"] = utils
    if importlib.util.find_spec("mmcv") is None:
        custom = types.ModuleType("lib.mmcv_custom")
        custom.load_checkpoint = None  # type: ignore[attr-defined]  # only used with ImageNet weights
        sys.modules["lib.mmcv_custom"] = custom
    import lib.segmentation as segmentation  # noqa: PLC0415  (from the checkout)

    return segmentation


def official_lavt(root: Path) -> torch.nn.Module:
    """The official paper-size LAVT (Swin-B, window 12, BERT outside it), random init, from the checkout at
    ``root``; ``model(images, words (B, 768, L), l_mask=(B, L, 1))`` -> class scores (B, 2, H, W)."""
    segmentation = import_official(root)
    args = Namespace(swin_type="base", window12=True, mha="", fusion_drop=0.0)
    return segmentation.lavt(pretrained="", args=args)
