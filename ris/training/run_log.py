"""The MLflow run of a training: opened (or reopened) with its params and tags, marked FAILED on an error.

:func:`tracked` holds it open around the epochs; the loop writes its metrics through ``run.tracker``. Step
losses wait in ``state.pending`` until the ``last.pt`` that covers them is written (:func:`flush_pending`), so
a killed attempt's resume logs each metric exactly once; :func:`open_tracker` sends, on resume, what the
killed attempt saved but may not have sent. :func:`runtime_tags` make runs comparable (code version, locked
environment, device).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ris.training.preemption import Preempted
from ris.training.run import Run
from ris.training.tracking import Tracker
from ris.utils import read_json, write_json

log = logging.getLogger(__name__)

__all__ = [
    "batch_tags",
    "epoch_metrics",
    "flush_pending",
    "git_commit",
    "mark_failed",
    "open_tracker",
    "runtime_tags",
    "tracked",
]


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """An epoch's history record as MLflow metrics (logged at step ``epoch``)."""
    return {k: v for k, v in record.items() if k != "epoch"}


@contextlib.contextmanager
def tracked(run: Run) -> Iterator[None]:
    """The MLflow run, open (rank 0) for the duration; an error other than a preemption marks it FAILED."""
    open_tracker(run)
    try:
        yield
    except Preempted:
        raise
    except BaseException as e:
        mark_failed(run, e)
        raise


def open_tracker(run: Run) -> None:
    """Rank 0 opens (or, resuming, reopens) the MLflow run and sends what a killed attempt did not."""
    if not run.ctx.is_main:
        return
    tr, run_id = run.cfg["tracking"], run.mlflow_run_id
    tags = {**tr["tags"], **runtime_tags(run.dev, run.ctx.world_size, run.precision), **batch_tags(run)}
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
    if run.resumed:  # log what a killed attempt saved but may not have sent, and only that
        logged = tracker.logged_steps("train_loss")
        for record in s.history:
            if record["epoch"] not in logged:
                tracker.log_metrics(epoch_metrics(record), step=record["epoch"])
        if s.pending:
            logged = tracker.logged_steps("train_loss_step")
            s.pending = [p for p in s.pending if int(p[0]) not in logged]
            flush_pending(run)


def git_commit(folder: Path | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the git checkout holding ``folder`` (this package by default); ("unknown", False)."""
    folder = Path(folder or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return commit, dirty


def runtime_tags(device: Any = None, world_size: int = 1, precision: str | None = None) -> dict[str, str]:
    """Tags that make runs comparable: code version, locked environment, torch/CUDA, device, processes, precision.

    ``env_lock_sha256`` is the sha256 of ``requirements-lock.txt`` ("none" outside a checkout): two runs
    with the same value were made by the same locked environment (when installed by scripts/setup.sh).
    """
    import torch

    from ris.lock import lock_sha256

    commit, dirty = git_commit()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    tags = {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
        "env_lock_sha256": lock_sha256() or "none",
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda or "none"),
        "device": dev.type,
        "device_name": name,
        "world_size": str(world_size),
        "host": socket.gethostname(),
    }
    if precision:
        tags["precision"] = precision
    return tags


def batch_tags(run: Run) -> dict[str, str]:
    return {"micro_batch_size": str(run.micro), "accumulation_steps": str(run.accum)}


def flush_pending(run: Run) -> None:
    """Send the step losses waiting in ``state.pending`` to MLflow."""
    pending = run.state.pending
    if run.tracker and pending:
        run.tracker.log_records(
            [(k, v, int(p[0])) for p in pending for k, v in (("train_loss_step", p[1]), ("lr_step", p[2]))]
        )
    run.state.pending = []


def mark_failed(run: Run, err: BaseException) -> None:
    """Record the failure in MLflow (best effort: the error itself is what the user sees)."""
    if run.tracker:
        with contextlib.suppress(Exception):
            run.tracker.set_tags({"failure": f"{type(err).__name__}: {err}"[:4000]})
            run.tracker.finish("FAILED")
