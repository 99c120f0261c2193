"""Resume: what ``work/last.pt`` holds, how a run restores it, and the stop on a signal that writes it.

A rerun finds ``work/last.pt`` and continues at the same step with the same weights, optimizer,
scheduler, scaler, RNG states, data position, micro-batch size and MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ris.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from ris.training.ema import build_ema
from ris.training.preemption import Preempted, marker_path
from ris.training.run import Run
from ris.training.run_log import flush_pending
from ris.training.tracking import flatten
from ris.utils import write_json

log = logging.getLogger(__name__)

__all__ = ["ENGINE_KEYS", "config_changes", "preempt", "restore", "resume_state", "save_last"]

# Settings that change how, not what, a run trains: resuming with other values is expected (e.g. more GPUs).
ENGINE_KEYS = frozenset(
    {
        "device",
        "precision",
        "channels_last",
        "gpus",
        "num_workers",
        "checkpoint_every_steps",
        "log_every_steps",
        "keep_work",
    }
)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two run configurations (tracking and engine keys aside)."""
    a = flatten({k: v for k, v in old.items() if k != "tracking"})
    b = flatten({k: v for k, v in new.items() if k != "tracking"})
    return sorted(
        k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (k.startswith("train.") and k[6:] in ENGINE_KEYS)
    )


def restore(run: Run, ckpt: dict[str, Any]) -> str | None:
    """Load a ``last.pt`` into ``run``; return its MLflow run id."""
    changed = config_changes(ckpt.get("config", {}), run.cfg)
    if changed:
        log.warning("resuming with a changed configuration (%s): results may differ", ", ".join(changed))
    run.core.load_checkpoint_state(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None and ckpt.get("ema"):
        run.ema.load_state_dict(ckpt["ema"])
    elif run.ema is not None:  # EMA turned on for a resumed run: it starts from the restored weights
        run.ema = build_ema(run.core, run.ema.decay)
    set_rng_state(ckpt["rng"])
    s = run.state
    if "epochs_done" in ckpt:
        s.epochs_done, s.step = int(ckpt["epochs_done"]), int(ckpt["step"])
    else:  # an older last.pt, written at the end of epoch ``epoch``
        s.epochs_done, s.step = int(ckpt["epoch"]) + 1, 0
    s.global_step = int(ckpt.get("global_step", s.epochs_done * run.steps_per_epoch + s.step))
    s.epoch_losses = [float(x) for x in ckpt.get("epoch_losses", [])]
    s.history = list(ckpt.get("history", []))
    s.pending = [list(x) for x in ckpt.get("pending", [])]
    s.best = float(ckpt["best_val_oIoU"])
    if run.auto_micro and ckpt.get("micro_batch_size"):  # keep the size an out-of-memory error led to
        run.set_micro(int(ckpt["micro_batch_size"]))
    run.log(
        "resuming %s at epoch %d step %d (global step %d), micro-batches of %d",
        run.cfg["run"], s.epochs_done + 1, s.step, s.global_step, run.micro,
    )  # fmt: skip
    return ckpt.get("mlflow_run_id")


def resume_state(run: Run) -> dict[str, Any]:
    """Everything :func:`restore` needs to continue exactly."""
    s = run.state
    return {
        "config": run.cfg,
        "vocab": run.vocab,
        "vocab_size": run.vocab_size,
        "epoch": s.epochs_done,
        "epochs_done": s.epochs_done,
        "step": s.step,
        "global_step": s.global_step,
        "steps_per_epoch": run.steps_per_epoch,
        "micro_batch_size": run.micro,
        "epoch_losses": list(s.epoch_losses),
        "history": list(s.history),
        "pending": list(s.pending),
        "model": raw_weights(run),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "best_val_oIoU": s.best,
        "world_size": run.ctx.world_size,
        "mlflow_run_id": run.tracker.run_id if run.tracker else None,
    }


def raw_weights(run: Run) -> dict[str, Any]:
    """The model's own weights (not the EMA's, also while validation has the averages applied)."""
    state = run.core.checkpoint_state()
    return run.ema.raw(state) if run.ema is not None else state


def save_last(run: Run) -> None:
    """Rank 0 writes ``last.pt``, then sends the step metrics it covers to MLflow."""
    if not run.ctx.is_main:
        return
    save_checkpoint(run.last_path, resume_state(run))
    flush_pending(run)


def preempt(run: Run, epoch: int) -> None:
    """Save ``last.pt`` and the launcher's marker, tell MLflow (briefly: SIGKILL may be near), stop."""
    s = run.state
    if run.ctx.is_main:
        save_checkpoint(run.last_path, resume_state(run))
        write_json(
            marker_path(run.out_dir), {"checkpoint": str(run.last_path), "epoch": s.epochs_done + 1, "step": s.step}
        )
    if run.tracker:  # best effort: what does not reach MLflow now is in last.pt and sent on resume
        run.tracker.attempts = 3
        with contextlib.suppress(Exception):
            flush_pending(run)
            run.tracker.finish("KILLED")
    raise Preempted(
        f"{run.cfg['run']}: stopped by a signal at epoch {epoch + 1} step {s.step} "
        f"(global step {s.global_step}); resume from {run.last_path}",
        str(run.last_path),
    )
