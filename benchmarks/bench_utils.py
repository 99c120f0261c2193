"""Helpers shared by the benchmark scripts: the machine a figure came from, and Markdown tables."""

from __future__ import annotations

import os
import platform
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
