"""What a run reports: MLflow (params, step and epoch metrics, tags), ``history.jsonl``, the published outputs.

Step losses wait in ``state.pending`` until the ``last.pt`` that covers them is written, so a killed
attempt's resume logs each metric exactly once. When training completes, rank 0 publishes ``model.pt``
(a copy of ``work/best.pt``) and ``history.jsonl`` (the Snakemake outputs) and deletes ``work/``
unless ``train.keep_work``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any

import numpy as np

from ris.training.run import Run
from ris.training.tracking import Tracker, runtime_tags
from ris.utils import atomic_path, read_json, write_json, write_jsonl

log = logging.getLogger(__name__)

__all__ = [
    "flush_pending",
    "log_epoch",
    "log_micro_batch",
    "log_step",
    "log_val_batch",
    "mark_failed",
    "open_tracker",
    "publish",
]


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if k != "epoch"}


def open_tracker(run: Run, run_id: str | None, resumed: bool) -> None:
    """Rank 0 opens (or, resuming, reopens) the MLflow run and sends what a killed attempt did not."""
    if not run.ctx.is_main:
        return
    tr = run.cfg["tracking"]
    tags = {**tr["tags"], **runtime_tags(run.dev, run.ctx.world_size, run.precision), **_batch_tags(run)}
    # Killed before its first checkpoint, an attempt still left its run id: keep logging into that run.
    run_file = run.work / "mlflow_run.json"
    if run_id is None and run_file.exists():
        previous = read_json(run_file)
        run_id = previous["run_id"] if previous.get("uri") == tr["uri"] else None
    tracker = run.tracker = Tracker(tr["uri"], tr["experiment"], run_id=run_id, tags=tags, run_name=run.cfg["run"])
    if tracker.run_id != run_id:
        write_json(run_file, {"run_id": tracker.run_id, "uri": tr["uri"]})
    derived = {
        "vocab_size": run.vocab_size,
        "steps_per_epoch": run.steps_per_epoch,
        "parameters": sum(p.numel() for p in run.core.parameters()),
    }
    tracker.log_params({**run.cfg, "derived": derived})  # params already there are skipped
    if run.auto_micro:
        tracker.log_metrics({"micro_batch_size": run.micro}, step=run.state.global_step)
    s = run.state
    if resumed:  # log what a killed attempt saved but may not have sent, and only that
        logged = tracker.logged_steps("train_loss")
        for record in s.history:
            if record["epoch"] not in logged:
                tracker.log_metrics(epoch_metrics(record), step=record["epoch"])
        if s.pending:
            logged = tracker.logged_steps("train_loss_step")
            s.pending = [p for p in s.pending if int(p[0]) not in logged]
            flush_pending(run)


def _batch_tags(run: Run) -> dict[str, str]:
    return {"micro_batch_size": str(run.micro), "accumulation_steps": str(run.accum)}


def log_micro_batch(run: Run, epoch: int, reason: str) -> None:
    """The micro-batch changed (``micro_batch_size: auto`` after out-of-memory): log line, MLflow tag and metric."""
    run.log(
        "%s: %s at epoch %d step %d (global step %d): micro-batches of %d now, %d accumulated per process "
        "(global batch %d kept)",
        run.cfg["run"], reason, epoch + 1, run.state.step + 1, run.state.global_step + 1, run.micro, run.accum,
        run.batch_size,
    )  # fmt: skip
    if run.tracker:
        run.tracker.set_tags(_batch_tags(run))
        run.tracker.log_metrics({"micro_batch_size": run.micro}, step=run.state.global_step)


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


def flush_pending(run: Run) -> None:
    """Send the step losses waiting in ``state.pending`` to MLflow."""
    pending = run.state.pending
    if run.tracker and pending:
        run.tracker.log_records(
            [(k, v, int(p[0])) for p in pending for k, v in (("train_loss_step", p[1]), ("lr_step", p[2]))]
        )
    run.state.pending = []


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


def log_epoch(run: Run, record: dict[str, Any]) -> None:
    """Rank 0: ``work/history.jsonl`` and the epoch's metrics to MLflow (after ``last.pt`` is written)."""
    write_jsonl(run.work / "history.jsonl", run.state.history)
    if run.tracker:
        run.tracker.log_metrics(epoch_metrics(record), step=record["epoch"])
    flush_pending(run)


def mark_failed(run: Run, err: BaseException) -> None:
    """Record the failure in MLflow (best effort: the error itself is what the user sees)."""
    if run.tracker:
        with contextlib.suppress(Exception):
            run.tracker.set_tags({"failure": f"{type(err).__name__}: {err}"[:4000]})
            run.tracker.finish("FAILED")


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
