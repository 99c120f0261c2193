"""Validation and checkpoint selection: oIoU/mIoU on the whole val split, the best model in ``work/best.pt``.

Validation runs after every ``train.val_every_epochs``-th epoch and always after the last one; each rank
evaluates a strided shard and the metrics are computed in dataset order, as on a single process.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ris.metrics import intersection_union, summarize
from ris.training import distributed as ddp
from ris.training.checkpoint import save_checkpoint
from ris.training.ema import ema_weights
from ris.training.preemption import ignore_stop_signals
from ris.training.run import Run
from ris.training.state import preempt
from ris.training.step import autocast, inputs

__all__ = ["keep_if_best", "validate", "validation_due"]


def validation_due(run: Run, epoch: int) -> bool:
    """Every ``train.val_every_epochs``-th epoch, and the last one (so a best model always exists)."""
    every = int(run.tcfg.get("val_every_epochs") or 1)
    return (epoch + 1) % every == 0 or epoch + 1 == run.epochs


def validate(run: Run, epoch: int) -> dict[str, float]:
    """Validation metrics over the whole val split (of the EMA weights under ``train.ema_decay``)."""
    with ema_weights(run.ema, run.core):
        return _validate(run, epoch)


@torch.no_grad()
def _validate(run: Run, epoch: int) -> dict[str, float]:
    """Each rank evaluates a strided shard; the metrics are computed in dataset order."""
    ctx = run.ctx
    ddp.broadcast_buffers(run.core, ctx)  # every rank evaluates rank 0's BatchNorm statistics
    run.core.eval()
    n, w = len(run.val_ds), ctx.world_size
    shard = list(range(ctx.rank, n, w))
    bs = run.micro * 2
    loader = DataLoader(Subset(run.val_ds, shard), batch_size=bs, shuffle=False,
                        num_workers=int(run.tcfg.get("num_workers", 0)),
                        worker_init_fn=ignore_stop_signals)  # fmt: skip
    inter, union, rows = [], [], []
    batches = iter(loader)
    for _ in range(math.ceil(math.ceil(n / w) / bs)):  # the same count on every rank
        if ddp.any_rank(run.stop.requested, ctx, run.dev):
            preempt(run, epoch)
        batch = next(batches, None)
        if batch is None:
            continue
        target = batch["target"].to(run.dev)
        with autocast(run):
            pred = run.core.predict(*inputs(run, batch), tuple(target.shape[-2:]))
        i, u = intersection_union(pred, target)
        inter.append(i.cpu().numpy())
        union.append(u.cpu().numpy())
        rows.append(batch["row"].numpy())
    run.model.train()
    parts = ddp.gather((np.concatenate(inter), np.concatenate(union), np.concatenate(rows)), ctx)
    all_rows = np.concatenate([p[2] for p in parts])
    order = np.argsort(all_rows, kind="stable")  # dataset order, as on a single process
    return summarize(np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order])


def keep_if_best(run: Run, epoch: int, val: dict[str, float]) -> None:
    """Rank 0: a new best validation oIoU writes ``work/best.pt`` (weights, config, vocabulary; no optimizer)."""
    if not val or val["oIoU"] <= run.state.best:
        return
    run.state.best = val["oIoU"]
    save_checkpoint(run.work / "best.pt", best_state(run, epoch, val))


def best_state(run: Run, epoch: int, val: dict[str, float]) -> dict[str, Any]:
    """What ``best.pt`` (and so ``model.pt``) holds: the weights validated, the EMA ones when it is on."""
    model = run.core.checkpoint_state()
    return {
        "config": run.cfg,
        "vocab": run.vocab,
        "vocab_size": run.vocab_size,
        "epoch": epoch,
        "global_step": run.state.global_step,
        "model": run.ema.averaged(model) if run.ema is not None else model,
        "val": val,
        "best_val_oIoU": run.state.best,
        "mlflow_run_id": run.tracker.run_id if run.tracker else None,
    }
