"""The training loop: AdamW + poly LR, validation every epoch, exact resume, DDP, MLflow.

Layout of a run directory::

    config.json          resolved run configuration (also inside every checkpoint)
    work/last.pt         everything needed to resume exactly (atomic; every epoch and every K steps)
    work/best.pt         best model by validation oIoU
    work/history.jsonl   one JSON line of metrics per epoch
    work/preempted.json  written when a signal stopped the run (the launcher's cue for exit status 75)
    model.pt             published copy of work/best.pt when training completes (the Snakemake output):
                         weights, run config, vocabulary (or the pretrained tokenizer's name); no optimizer
    history.jsonl        published copy of work/history.jsonl

Once ``model.pt`` and ``history.jsonl`` are published, ``work/`` is deleted (``last.pt`` alone is ~3x the
weights; ``train.keep_work: true`` keeps it). A failed, killed or preempted run never gets there, so its
``work/`` stays and the next attempt resumes from it.

Devices: ``train.device`` (``auto``: CUDA when present, else CPU), ``train.precision`` (``auto``: bf16
autocast on CUDA, fp32 on CPU; ``fp16`` adds a grad scaler), ``train.channels_last``. One code path:
on the CPU, autocast and the scaler are simply disabled.

Batches: ``train.batch_size`` is the *global* batch of one optimizer step (32 in the papers), whatever
the number of processes; ``train.micro_batch_size`` caps what one process runs per forward and gradient
accumulation makes up the rest (:mod:`ris.training.sampler`). ``auto`` starts from the whole share of a
process and halves it on out-of-memory, redoing the step (:mod:`ris.training.step`).

EMA: ``train.ema_decay`` (null: off) averages the trainable weights after every optimizer step; validation,
``best.pt`` and ``model.pt`` use the averages, ``last.pt`` keeps both (:mod:`ris.training.ema`).

Resume: a rerun finds ``work/last.pt`` and continues at the same step with the same weights, optimizer,
scheduler, scaler, RNG states, data position and MLflow run. Dropout draws come from a seed derived from
(seed, epoch, step, micro-batch), so they do not depend on the process layout or on interruptions: on the
CPU a run killed at any step and resumed ends bit-identical to an uninterrupted one.

Multi-GPU: under torchrun every process trains on its micro-batches and DDP averages the gradients.
DDP runs with ``find_unused_parameters=True``: the language gate after the last backbone stage feeds a
visual stream no later stage reads, so it never gets a gradient (LAVT's official train.py does the same);
detecting unused parameters at run time also covers the method- and N-dependent branches of the other
methods, at the cost of one walk over the autograd graph per step, small next to the model's compute.
BatchNorm normalises with per-micro-batch statistics unless ``train.sync_batchnorm`` (CUDA only; LAVT's
official code uses it); the running statistics are merged after every step so that they are those of one
process accumulating the same micro-batches (:class:`ris.training.distributed.BatchNormStatsMerger`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ris.training import distributed as ddp
from ris.training.checkpoint import load_checkpoint, save_checkpoint
from ris.training.preemption import Preempted, StopRequest
from ris.training.run import Run, build_run, poly_lambda, resolve_precision, wrap_for_processes
from ris.training.run_config import check_run_config
from ris.training.run_log import log_epoch, mark_failed, open_tracker, publish
from ris.training.state import preempt, restore, resume_state, save_last
from ris.training.step import NonFiniteLossError, TrainingOOMError, epoch_batches, train_step
from ris.training.validation import keep_if_best, validate, validation_due

__all__ = ["NonFiniteLossError", "TrainingOOMError", "poly_lambda", "resolve_precision", "train"]


def train(cfg: dict[str, Any], out_dir: Path, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one run described by the resolved config ``cfg`` into ``out_dir``; returns the summary.

    Raises :class:`Preempted` after saving ``last.pt`` when SIGTERM/SIGUSR1 arrives (``ris train`` exits
    75), :class:`NonFiniteLossError` on a NaN/inf loss and :class:`TrainingOOMError` on out-of-memory.
    """
    check_run_config(cfg)
    ctx = ddp.env_context()
    dev = ddp.select_device(device or cfg["train"].get("device"), ctx.local_rank)
    ctx = ddp.setup(dev)
    try:
        with StopRequest() as stop:
            run = build_run(cfg, Path(out_dir), dev, ctx, stop, progress)
            resumed = run.last_path.exists()
            run_id = restore(run, load_checkpoint(run.last_path)) if resumed else None
            wrap_for_processes(run)
            open_tracker(run, run_id, resumed)
            return fit(run)
    finally:
        ddp.teardown(ctx)


def fit(run: Run) -> dict[str, Any]:
    """Epochs from where the run stands to the end, then the published outputs."""
    try:
        for epoch in range(run.state.epochs_done, run.epochs):
            t0 = time.time()
            train_epoch(run, epoch)
            val = validate(run, epoch) if validation_due(run, epoch) else {}
            end_epoch(run, epoch, val, seconds=time.time() - t0)
    except Preempted:
        raise
    except BaseException as e:
        mark_failed(run, e)
        raise
    return publish(run)


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


def end_epoch(run: Run, epoch: int, val: dict[str, float], seconds: float) -> None:
    """Close the epoch: its history record, then (rank 0) best model, ``last.pt``, history and MLflow."""
    s = run.state
    record = {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(s.epoch_losses)),
        "lr": run.scheduler.get_last_lr()[0],
        "seconds": round(seconds, 2),
        **{f"val_{k}": v for k, v in val.items()},
    }
    s.history.append(record)
    s.epochs_done, s.step, s.epoch_losses = epoch + 1, 0, []
    run.log("epoch %d: %s", epoch + 1, record)
    if not run.ctx.is_main:
        return
    keep_if_best(run, epoch, val)
    save_checkpoint(run.last_path, resume_state(run))
    log_epoch(run, record)
