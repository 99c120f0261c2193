"""The training loop: build, resume, epochs of optimizer steps, validation, checkpoints, publish.

Read :func:`train` top-down: it builds the run (:func:`ris.training.run.build_run`: data, model, optimizer,
restored from ``work/last.pt`` when a previous attempt left one), opens its MLflow run
(:func:`ris.training.run_log.tracked`), then for each epoch runs its optimizer steps (:func:`train_epoch`,
:func:`train_step`: micro-batches, accumulated gradients, the optimizer step, step logging), validates when
due (:func:`validate`) and closes the epoch (:func:`end_epoch`: ``best.pt``, ``last.pt``, ``history.jsonl``,
MLflow); at the end it publishes ``model.pt`` (:func:`publish`).

Devices: ``train.device`` (``auto``: CUDA when present, else CPU), ``train.precision`` (``auto``: bf16
autocast on CUDA, fp32 on CPU; ``fp16`` adds a grad scaler), ``train.channels_last``. One code path:
on the CPU, autocast and the scaler are simply disabled.

Batches: ``train.batch_size`` is the *global* batch of one optimizer step (32 in the papers), whatever the
number of processes. Each step's share of a process (``batch_size / world_size`` items) arrives as one
collated batch and is cut here into ``accum`` micro-batches of ``micro`` items (``train.micro_batch_size``;
:func:`ris.training.sampler.plan_batches`), so a step can be redone with smaller micro-batches on the very same
items. Under ``micro_batch_size: auto`` an out-of-memory error frees what the attempt held (gradients,
BatchNorm statistics it updated, the CUDA cache), halves the micro-batch and redoes the step: the global
batch, the step count and the dropout seeds (drawn per micro-batch from (seed, epoch, step, micro-batch))
are those of a run started with the smaller micro-batch. At a micro-batch of 1, with a fixed size, or under
DDP, it is a :class:`TrainingOOMError`.

Validation: after every ``train.val_every_epochs``-th epoch and after the last one (so a best model always
exists); each rank evaluates a strided shard in batches of the micro-batch in use (halved and redone on
out-of-memory under ``auto``, on each rank alone) and the metrics are computed in dataset order. With
``train.ema_decay``, validation, ``best.pt`` and ``model.pt`` use the EMA weights
(:class:`ris.training.run.WeightEMA`).

Resume: dropout draws come from a seed derived from (seed, epoch, step, micro-batch), so they depend neither
on the process layout nor on interruptions: on the CPU a run killed at any step and resumed ends
bit-identical to an uninterrupted one.

Multi-GPU (torchrun): DDP averages the gradients; see :mod:`ris.training.distributed`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ris.metrics import intersection_union, summarize
from ris.models.losses import InstanceTargets
from ris.training import distributed as ddp
from ris.training import run_log
from ris.training.preemption import Preempted, ignore_stop_signals, marker_path, stop_requests
from ris.training.run import Run, build_run, ema_weights, save_checkpoints
from ris.training.run_config import check_run_config
from ris.training.sampler import StepSampler, micro_seed
from ris.utils import atomic_path, write_json, write_jsonl

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "OOM_ERRORS", "TrainingOOMError", "train"]

OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingOOMError(RuntimeError):
    """The device ran out of memory; the message says which settings lower the memory per step."""


def train(cfg: dict[str, Any], out_dir: Path, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one run described by the resolved config ``cfg`` into ``out_dir``; returns the summary.

    Raises :class:`Preempted` after saving ``last.pt`` when SIGTERM/SIGUSR1 arrives (``ris train`` exits
    75), :class:`NonFiniteLossError` on a NaN/inf loss and :class:`TrainingOOMError` on out-of-memory.
    """
    check_run_config(cfg)
    with ddp.process_group(device or cfg["train"].get("device")) as (ctx, dev), stop_requests(out_dir) as stop:
        run = build_run(cfg, Path(out_dir), dev, ctx, stop, progress)  # restored from work/last.pt if there
        with run_log.tracked(run):  # MLflow; an error marks the run FAILED
            for epoch in range(run.state.epochs_done, run.epochs):
                t0 = time.time()
                train_epoch(run, epoch)
                val = validate(run, epoch) if validation_due(run, epoch) else {}
                end_epoch(run, epoch, val, seconds=time.time() - t0)  # best.pt, last.pt, history, MLflow
        return publish(run)  # model.pt and history.jsonl; work/ deleted


# ------------------------------------------------------------------------------------ an epoch's steps


def train_epoch(run: Run, epoch: int) -> None:
    """The remaining optimizer steps of ``epoch``; ``last.pt`` every ``train.checkpoint_every_steps``."""
    s = run.state
    loader = epoch_batches(run, epoch)
    run.model.train()
    bar = tqdm(
        total=run.steps_per_epoch,
        initial=s.step,
        desc=f"{run.cfg['run']} epoch {epoch + 1}/{run.epochs}",
        disable=not run.show_progress,
    )
    batches = iter(loader)
    every = int(run.tcfg.get("checkpoint_every_steps") or 0)
    try:
        while s.step < run.steps_per_epoch:
            stop = train_step(run, epoch, next(batches))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(s.epoch_losses[-20:]):.4f}")
            if stop:
                preempt(run, epoch)
            if every and s.global_step % every == 0 and s.step < run.steps_per_epoch:
                save_last(run)
    finally:
        bar.close()
        del batches, loader  # DataLoader workers stop now, also when a signal or an error ends the loop


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
    saved_stats = _batchnorm_stats(run.core) if _may_shrink(run) else []
    while True:
        result = _accumulate(run, epoch, share)
        if not isinstance(result, str):
            break
        _shrink_after_oom(run, epoch, result, saved_stats)  # outside the except block: the failed attempt is freed
    total, bad, terms = result
    # The step's collectives: BatchNorm statistics merged; the loss, non-finite losses, stop requests and loss
    # terms of all ranks summed.
    loss_sum, nonfinite, stops, *term_sums = ddp.end_step(
        run.bn_stats, [total, bad, float(run.stop.requested), *terms.values()], run.ctx, run.dev
    )
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
    # Means over the step's micro-batches, all of ``micro`` items: so the epoch's means weigh every sample alike.
    s.epoch_losses.append(loss_sum / (run.ctx.world_size * run.accum))
    for name, value in zip(terms, term_sums, strict=True):
        s.epoch_terms.setdefault(name, []).append(value / (run.ctx.world_size * run.accum))
    log_step(run, epoch)
    return stops > 0


def log_step(run: Run, epoch: int) -> None:
    """Every ``train.log_every_steps``: the mean step loss of the window to the log and (later) MLflow."""
    s, every = run.state, int(run.tcfg.get("log_every_steps") or 0)
    if not every or s.global_step % every:
        return
    window = float(np.mean(s.epoch_losses[-every:]))
    lr = run.scheduler.get_last_lr()[0]
    s.pending.append([s.global_step, window, lr])
    run.log(
        "%s epoch %d/%d step %d/%d (global step %d): loss %.5f lr %.3g",
        run.cfg["run"], epoch + 1, run.epochs, s.step, run.steps_per_epoch, s.global_step, window, lr,
    )  # fmt: skip


def _accumulate(run: Run, epoch: int, share: dict[str, Any]) -> tuple[float, int, dict[str, float]] | str:
    """Forward and backward over the micro-batches: (loss sum, non-finite count, sum of each other term of the
    model's loss dict), or an out-of-memory message. The loss dict has the same keys at every call."""
    total, bad, terms = 0.0, 0, {}
    try:
        for a in range(run.accum):
            batch = {k: v[a * run.micro : (a + 1) * run.micro] for k, v in share.items()}
            torch.manual_seed(micro_seed(run.seed, epoch, run.state.step, run.ctx.rank * run.accum + a))
            sync = a == run.accum - 1
            no_sync = run.model.no_sync() if run.ctx.enabled and not sync else contextlib.nullcontext()
            with no_sync:
                with autocast(run):
                    out = run.model(*inputs(run, batch))
                    target = batch["target"].to(run.dev, non_blocking=True)
                    if run.core.uses_instances:  # N masks trained as the image's objects (ris.models.losses)
                        parts = run.core.loss(out, target, InstanceTargets.from_batch(batch, run.dev))
                    else:
                        parts = run.core.loss(out, target)
                run.scaler.scale(parts["loss"] / run.accum).backward()
            values = dict(zip(parts, torch.stack([v.detach().float() for v in parts.values()]).tolist()))  # 1 sync
            loss = values.pop("loss")
            if math.isfinite(loss):
                total += loss
            else:
                bad += 1
            for name, value in values.items():
                terms[name] = terms.get(name, 0.0) + value
    except OOM_ERRORS as e:
        return _oom_message(run, epoch, e)
    return total, bad, terms


def _may_shrink(run: Run) -> bool:
    """Whether an out-of-memory error in this step leads to a retry (one process: see ``_shrink_after_oom``)."""
    return run.auto_micro and run.micro > 1 and not run.ctx.enabled


def _shrink_after_oom(run: Run, epoch: int, message: str, saved_stats: list[tuple[torch.Tensor, torch.Tensor]]):
    """Free the failed attempt and halve the micro-batch (a log line, the MLflow tag and metric), or raise
    :class:`TrainingOOMError` if it cannot."""
    if not _may_shrink(run):
        raise TrainingOOMError(message)
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, before in saved_stats:  # the attempt's forwards updated the running statistics
            buffer.copy_(before)
    if run.dev.type == "cuda":
        torch.cuda.empty_cache()
    run.set_micro(run.micro // 2)
    run.log(
        "%s: out of memory at epoch %d step %d (global step %d): micro-batches of %d now, %d accumulated per "
        "process (global batch %d kept)",
        run.cfg["run"], epoch + 1, run.state.step + 1, run.state.global_step + 1, run.micro, run.accum,
        run.batch_size,
    )  # fmt: skip
    if run.tracker:
        run.tracker.set_tags(run_log.batch_tags(run))
        run.tracker.log_metrics({"micro_batch_size": run.micro}, step=run.state.global_step)


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


# ------------------------------------------------------------------------------------------- validation


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
    """Each rank evaluates a strided shard in batches of the training micro-batch in use; the metrics are
    computed in dataset order. Out of memory under ``micro_batch_size: auto`` halves the batch and redoes it."""
    ctx = run.ctx
    ddp.broadcast_buffers(run.core, ctx)  # every rank evaluates rank 0's BatchNorm statistics
    run.core.eval()
    n, w, bs = len(run.val_ds), ctx.world_size, run.micro
    loader = DataLoader(Subset(run.val_ds, range(ctx.rank, n, w)), batch_size=bs, shuffle=False,
                        num_workers=int(run.tcfg.get("num_workers", 0)),
                        worker_init_fn=ignore_stop_signals)  # fmt: skip
    chunk, inter, union, rows = bs, [], [], []
    batches = iter(loader)
    for _ in range(math.ceil(math.ceil(n / w) / bs)):  # the same count on every rank, whatever its chunk
        if ddp.all_reduce_sum([float(run.stop.requested)], ctx, run.dev)[0]:  # a stop on any rank
            preempt(run, epoch)
        batch = next(batches, None)
        if batch is None:
            continue
        while True:
            try:
                parts = [_val_batch(run, batch, i, chunk) for i in range(0, len(batch["row"]), chunk)]
                break
            except OOM_ERRORS as e:
                error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            chunk = _halve_val_batch(run, epoch, chunk, error)  # outside the except block: the attempt is freed
        inter += [p[0] for p in parts]
        union += [p[1] for p in parts]
        rows.append(batch["row"].numpy())
    run.model.train()
    parts = ddp.gather((np.concatenate(inter), np.concatenate(union), np.concatenate(rows)), ctx)
    all_rows = np.concatenate([p[2] for p in parts])
    order = np.argsort(all_rows, kind="stable")  # dataset order, as on a single process
    return summarize(np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order])


def _val_batch(run: Run, batch: dict[str, torch.Tensor], start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) per sample of ``batch[start : start + size]``."""
    part = {k: v[start : start + size] for k, v in batch.items()}
    target = part["target"].to(run.dev)
    with autocast(run):
        pred = run.core.predict(*inputs(run, part), tuple(target.shape[-2:]))
    i, u = intersection_union(pred, target)
    return i.cpu().numpy(), u.cpu().numpy()


def _halve_val_batch(run: Run, epoch: int, size: int, error: str) -> int:
    """The validation batch after out-of-memory at ``size``: half of it under ``micro_batch_size: auto``
    (each rank alone: the metrics do not depend on it), else :class:`TrainingOOMError`."""
    if not run.auto_micro or size == 1:
        advice = "set train.micro_batch_size to auto (halved on out-of-memory, in validation too) or lower it"
        if size == 1:
            advice = "even batches of 1 do not fit"
        raise TrainingOOMError(
            f"{run.cfg['run']}: out of memory on {run.dev} in the validation after epoch {epoch + 1} with batches "
            f"of {size} (the training micro-batch in use): {advice}; precision bf16 also saves memory. ({error})"
        )
    if run.dev.type == "cuda":
        torch.cuda.empty_cache()
    log_val_batch(run, epoch, size // 2)
    return size // 2


def log_val_batch(run: Run, epoch: int, size: int) -> None:
    """Validation ran out of memory (``micro_batch_size: auto``): a log line on the rank it happened on, and
    (rank 0) the MLflow metric ``val_batch_size`` at the epoch."""
    where = f" on rank {run.ctx.rank}" if run.ctx.enabled else ""
    log.warning(
        "%s: out of memory in the validation after epoch %d%s: batches of %d now (the batch is redone)",
        run.cfg["run"], epoch + 1, where, size,
    )  # fmt: skip
    if run.tracker:
        run.tracker.log_metrics({"val_batch_size": size}, step=epoch + 1)


# ------------------------------------------------------------------ the end of an epoch, a stop, the end


def end_epoch(run: Run, epoch: int, val: dict[str, float], seconds: float) -> None:
    """Close the epoch: its history record (``train_loss``, ``train_<term>`` per loss term, ``val_*``), then
    (rank 0) best model, ``last.pt``, history and MLflow."""
    s = run.state
    record = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(s.epoch_losses)),
        **{f"train_{name}": float(np.mean(values)) for name, values in s.epoch_terms.items()},
        "lr": run.scheduler.get_last_lr()[0],
        "seconds": round(seconds, 2),
        **{f"val_{k}": v for k, v in val.items()},
    }
    s.history.append(record)
    s.epochs_done, s.step, s.epoch_losses, s.epoch_terms = epoch + 1, 0, [], {}
    run.log("epoch %d: %s", epoch + 1, record)
    if not run.ctx.is_main:
        return
    new_best = None
    if val and val["oIoU"] > s.best:  # a new best: work/best.pt (weights, config, vocabulary; no optimizer)
        s.best, new_best = val["oIoU"], (epoch, val)
    save_checkpoints(run, new_best)
    write_jsonl(run.work / "history.jsonl", s.history)  # after last.pt, which holds the same history
    if run.tracker:
        run.tracker.log_metrics(run_log.epoch_metrics(record), step=record["epoch"])
    run_log.flush_pending(run)


def save_last(run: Run) -> None:
    """Rank 0 writes ``last.pt``, then sends the step metrics it covers to MLflow."""
    if not run.ctx.is_main:
        return
    save_checkpoints(run)
    run_log.flush_pending(run)


def preempt(run: Run, epoch: int) -> None:
    """Save ``last.pt`` and the launcher's marker, tell MLflow (briefly: SIGKILL may be near), stop."""
    s = run.state
    if run.ctx.is_main:
        save_checkpoints(run)
        write_json(
            marker_path(run.out_dir), {"checkpoint": str(run.last_path), "epoch": s.epochs_done + 1, "step": s.step}
        )
    if run.tracker:  # best effort: what does not reach MLflow now is in last.pt and sent on resume
        run.tracker.attempts = 3
        with contextlib.suppress(Exception):
            run_log.flush_pending(run)
            run.tracker.finish("KILLED")
    raise Preempted(
        f"{run.cfg['run']}: stopped by a signal at epoch {epoch + 1} step {s.step} "
        f"(global step {s.global_step}); resume from {run.last_path}"
    )


def publish(run: Run) -> dict[str, Any]:
    """Rank 0 publishes the outputs Snakemake waits for; every rank returns the summary."""
    s = run.state
    summary = {
        "run": run.cfg["run"],
        "best_val_oIoU": s.best,
        "epochs": len(s.history),
        "global_step": s.global_step,
        "world_size": run.ctx.world_size,
        "mlflow_run_id": run.tracker.run_id if run.tracker else None,
    }
    if not run.ctx.is_main:
        return summary
    with atomic_path(run.out_dir / "model.pt") as tmp:
        shutil.copyfile(run.work / "best.pt", tmp)
        with tmp.open("rb") as f:  # on disk before the resume state that could rebuild it is deleted
            os.fsync(f.fileno())
    write_jsonl(run.out_dir / "history.jsonl", s.history)
    if run.tracker:
        run.tracker.log_artifact(run.out_dir / "config.json")
        run.tracker.log_artifact(run.out_dir / "history.jsonl")
        run.tracker.log_metrics({"best_val_oIoU": s.best})
    if not run.tcfg.get("keep_work", False):  # lean results: the run is complete, its resume state served
        shutil.rmtree(run.work, ignore_errors=True)  # a leftover costs space only: never fail a finished run
        if run.work.exists():
            log.warning("could not delete %s (resume state of a completed run); it can be deleted", run.work)
    return summary
