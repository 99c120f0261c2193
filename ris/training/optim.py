"""Optimizers of the training loop, chosen by ``train.optimizer``.

``adamw`` (default): one AdamW group over every trainable parameter. ``lavt_official``: the parameter
groups of LAVT's official ``train.py`` (yz93/LAVT-RIS), the paper preset's choice:

1. backbone parameters (the Swin and, as in the official ``MultiModalSwinTransformer``, the per-stage
   fusion modules) whose name holds ``norm``, ``absolute_pos_embed`` or ``relative_position_bias_table``:
   weight decay 0;
2. every other parameter outside the text encoder (the rest of the backbone and fusion, the decoder and
   classifier, any method-specific head): the configured weight decay (0.01);
3. of BERT, the encoder layers 0-9 only (configured weight decay). BERT's embeddings and its last two
   layers are not optimised at all; :func:`build_optimizer` turns their gradients off, which gives the
   official weights (it computes and discards those gradients) without the work.

The schedule is the same for both: LAVT's poly decay per optimizer step, lr * (1 - step / (steps_per_epoch *
epochs)) ** ``train.poly_power`` (0.9; :func:`poly_schedule`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

__all__ = [
    "OPTIMIZERS",
    "build_optimizer",
    "lavt_official_groups",
    "optimizer_and_schedule",
    "poly_lambda",
    "poly_schedule",
]

OPTIMIZERS = ("adamw", "lavt_official")

NO_DECAY = re.compile(r"norm|absolute_pos_embed|relative_position_bias_table")
BACKBONE = re.compile(r"^(backbone|fusions)\.")
BERT_LAYER = re.compile(r"^text\.bert\.encoder\.layer\.(\d+)\.")
BERT_LAYERS_TRAINED = 10  # official train.py: encoder.layer[i] for i in range(10)


def lavt_official_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """LAVT's official AdamW parameter groups (see the module docstring), each with a ``name``.

    Parameters that are in no group are those the official recipe never optimises.
    """
    groups: dict[str, list[nn.Parameter]] = {"backbone_no_decay": [], "decay": [], "bert": []}
    for name, p in model.named_parameters():
        if name.startswith("text."):
            m = BERT_LAYER.match(name)
            if m and int(m[1]) < BERT_LAYERS_TRAINED:
                groups["bert"].append(p)
        elif BACKBONE.match(name) and NO_DECAY.search(name):
            groups["backbone_no_decay"].append(p)
        else:
            groups["decay"].append(p)
    decay = {"backbone_no_decay": 0.0, "decay": weight_decay, "bert": weight_decay}
    return [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in groups.items()]


def adamw(params: list[Any], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW with its fused kernel (CPU and CUDA): one kernel for all parameters instead of ~10 ops
    per tensor; the demo's CoupAlign training step took 15-25% less time on this CPU."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def build_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW for ``train.optimizer`` ``kind``; with ``lavt_official`` the parameters it leaves out stop
    requiring gradients (call before wrapping the model in DistributedDataParallel)."""
    if kind == "adamw":
        return adamw([p for p in model.parameters() if p.requires_grad], lr, weight_decay)
    if kind != "lavt_official":
        raise ValueError(f"train.optimizer: {kind!r} is not one of {', '.join(OPTIMIZERS)}")
    groups = lavt_official_groups(model, weight_decay)
    kept = {id(p) for g in groups for p in g["params"]}
    for p in model.parameters():
        if id(p) not in kept:
            p.requires_grad_(False)
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    return adamw([g for g in groups if g["params"]], lr, weight_decay)


def poly_lambda(total_steps: int, power: float):
    """LAVT's polynomial decay factor of optimizer step ``step``: (1 - step / total) ** power."""
    return lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power


def poly_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of both optimizers, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total_steps, power))


def optimizer_and_schedule(
    model: nn.Module, train: dict[str, Any], steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer and its poly schedule for a run config's ``train`` section (``optimizer``, ``lr``,
    ``weight_decay``, ``poly_power``, over ``epochs`` of ``steps_per_epoch`` optimizer steps)."""
    optimizer = build_optimizer(
        model, train.get("optimizer", "adamw"), float(train["lr"]), float(train["weight_decay"])
    )
    total = int(train["epochs"]) * steps_per_epoch
    return optimizer, poly_schedule(optimizer, total, float(train.get("poly_power", 0.9)))
