"""One optimizer step: the process's share of the global batch in micro-batches, accumulated gradients,
autocast and the grad scaler, a stop on a non-finite loss, and out-of-memory handling.

Each step's share (``batch_size / world_size`` items) arrives as one collated batch and is cut here into
``accum`` micro-batches of ``micro`` items, so the step can be redone with smaller micro-batches on the
very same items. Under ``train.micro_batch_size: auto`` an out-of-memory error frees what the attempt
held (gradients, BatchNorm statistics it updated, the CUDA cache), halves the micro-batch and redoes the
step from its start: the global batch, the step count and the dropout seeds (drawn per micro-batch from
(seed, epoch, step, micro-batch)) are those of a run started with the smaller micro-batch. At a
micro-batch of 1, or with a fixed ``micro_batch_size``, it is a :class:`TrainingOOMError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from ris.training import distributed as ddp
from ris.training.preemption import ignore_stop_signals
from ris.training.run import Run
from ris.training.run_log import log_micro_batch, log_step
from ris.training.sampler import StepSampler, micro_seed

__all__ = ["NonFiniteLossError", "OOM_ERRORS", "TrainingOOMError", "autocast", "epoch_batches", "inputs", "train_step"]

OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingOOMError(RuntimeError):
    """The device ran out of memory; the message says which settings lower the memory per step."""


def epoch_batches(run: Run, epoch: int) -> DataLoader:
    """This process's share of every remaining global batch of ``epoch``, one collated batch per step."""
    run.train_ds.set_epoch(epoch)
    share = run.micro * run.accum
    sampler = StepSampler(
        len(run.train_ds), run.batch_size, share, 1, run.steps_per_epoch, run.seed, epoch, run.ctx.rank,
        start_step=run.state.step,
    )  # fmt: skip
    return DataLoader(
        run.train_ds,
        batch_sampler=sampler,
        num_workers=int(run.tcfg.get("num_workers", 0)),
        pin_memory=run.dev.type == "cuda",
        generator=torch.Generator().manual_seed(run.seed),
        worker_init_fn=ignore_stop_signals,
    )


def train_step(run: Run, epoch: int, share: dict[str, torch.Tensor]) -> bool:
    """One optimizer step on this process's ``share``; returns whether a stop was requested (on any rank)."""
    s = run.state
    run.bn_stats.begin()
    saved_stats = _batchnorm_stats(run.core) if _may_shrink(run) else []
    while True:
        result = _accumulate(run, epoch, share)
        if not isinstance(result, str):
            break
        _shrink_after_oom(run, epoch, result, saved_stats)  # outside the except block: the failed attempt is freed
    total, bad = result
    run.bn_stats.merge()
    # One collective per step: the loss, non-finite losses and stop requests of all ranks.
    loss_sum, nonfinite, stops = ddp.all_reduce_sum([total, bad, float(run.stop.requested)], run.ctx, run.dev)
    if nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        kept = "no checkpoint was written yet"
        if run.last_path.exists():
            kept = f"the last good checkpoint {run.last_path} is kept"
        raise NonFiniteLossError(
            f"{run.cfg['run']}: non-finite loss at epoch {epoch + 1} step {s.step + 1} (global step "
            f"{s.global_step + 1}); stopping without updating the weights; {kept}. Lower train.lr, set "
            f"train.grad_clip or use precision fp32/bf16 instead of fp16"
        )
    if run.tcfg.get("grad_clip"):
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, float(run.tcfg["grad_clip"]))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.core)
    s.step += 1
    s.global_step += 1
    s.epoch_losses.append(loss_sum / (run.ctx.world_size * run.accum))
    log_step(run, epoch)
    return stops > 0


def _micro_batches(run: Run, share: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for a in range(run.accum):
        yield {k: v[a * run.micro : (a + 1) * run.micro] for k, v in share.items()}


def _accumulate(run: Run, epoch: int, share: dict[str, Any]) -> tuple[float, int] | str:
    """Forward and backward over the micro-batches: (loss sum, non-finite count), or an out-of-memory message."""
    total, bad = 0.0, 0
    try:
        for a, batch in enumerate(_micro_batches(run, share)):
            torch.manual_seed(micro_seed(run.seed, epoch, run.state.step, run.ctx.rank * run.accum + a))
            sync = a == run.accum - 1
            no_sync = run.model.no_sync() if run.ctx.enabled and not sync else contextlib.nullcontext()
            with no_sync:
                with autocast(run):
                    out = run.model(*inputs(run, batch))
                    loss = run.core.loss(out, batch["target"].to(run.dev, non_blocking=True))["loss"]
                run.scaler.scale(loss / run.accum).backward()
            value = float(loss.detach())
            if math.isfinite(value):
                total += value
            else:
                bad += 1
    except OOM_ERRORS as e:
        return _oom_message(run, epoch, e)
    return total, bad


def _may_shrink(run: Run) -> bool:
    """Whether an out-of-memory error in this step leads to a retry (one process: see ``_shrink_after_oom``)."""
    return run.auto_micro and run.micro > 1 and not run.ctx.enabled


def _shrink_after_oom(run: Run, epoch: int, message: str, saved_stats: list[tuple[torch.Tensor, torch.Tensor]]):
    """Free the failed attempt and halve the micro-batch, or raise :class:`TrainingOOMError` if it cannot."""
    if not _may_shrink(run):
        raise TrainingOOMError(message)
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, before in saved_stats:  # the attempt's forwards updated the running statistics
            buffer.copy_(before)
    if run.dev.type == "cuda":
        torch.cuda.empty_cache()
    run.set_micro(run.micro // 2)
    log_micro_batch(run, epoch, "out of memory")


def _batchnorm_stats(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every BatchNorm running statistic, to undo a failed attempt's updates."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [
        (b, b.detach().clone())
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]


def autocast(run: Run):
    """bf16/fp16 autocast per ``train.precision``; disabled (fp32) otherwise."""
    dtype = run.amp_dtype
    return torch.autocast(run.dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def inputs(run: Run, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's inputs on the device (images channels-last when ``train.channels_last``)."""
    images = batch["image"].to(run.dev, non_blocking=True)
    if run.tcfg.get("channels_last", False):
        images = images.contiguous(memory_format=torch.channels_last)
    return (
        images,
        batch["input_ids"].to(run.dev, non_blocking=True),
        batch["attention_mask"].to(run.dev, non_blocking=True),
    )


def _oom_message(run: Run, epoch: int, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    s, micro = run.state, run.micro
    if micro > 1 and run.auto_micro:  # auto under DDP: one rank cannot redo a step the others are in
        advice = (
            f"train.micro_batch_size auto halves on out-of-memory on one process only; under DDP give a number "
            f"(e.g. {micro // 2}): gradient accumulation keeps the global batch_size, and so the results"
        )
    elif micro > 1:
        advice = (
            "Lower train.micro_batch_size (or set it to auto: halved on out-of-memory, one process): gradient "
            "accumulation keeps the global batch_size, and so the results"
        )
    else:
        advice = "Even micro-batches of 1 do not fit (train.micro_batch_size cannot go lower; accumulation keeps "
        advice += "the global batch_size)"
    return (
        f"{run.cfg['run']}: out of memory on {run.dev} at epoch {epoch + 1} step {s.step + 1} with "
        f"micro-batches of {micro} (global batch_size {run.batch_size} = {run.ctx.world_size} "
        f"process(es) x {run.accum} accumulation step(s) x {micro}). {advice}; precision bf16 and "
        f"channels_last also save memory, as do more GPUs (resources gpu). ({first})"
    )
