"""Multi-process training: device choice, process group (NCCL on GPUs, gloo on CPU), collectives, launcher.

``ris train --nproc N`` (the Snakemake rule passes its ``gpu`` resource) runs one process when N <= 1 and
otherwise re-launches itself under ``torchrun --standalone --nproc_per_node N`` (:func:`launch`); the
workers read their rank from the environment torchrun sets (:func:`process_group`). Only rank 0 writes files
and talks to MLflow; every rank takes part in the collectives below, in the same order.

Training under torchrun: every process trains on its micro-batches and DDP averages the gradients, with
``find_unused_parameters=True``: the language gate after the last backbone stage feeds a visual stream no
later stage reads, so it never gets a gradient (LAVT's official train.py does the same); detecting unused
parameters at run time also covers the method- and N-dependent branches of the other methods, at the cost of
one walk over the autograd graph per step. BatchNorm normalises with per-micro-batch statistics unless
``train.sync_batchnorm`` (CUDA only; LAVT's official code uses it); the running statistics are merged after
every step into those of one process accumulating the same micro-batches
(:class:`BatchNormStatsMerger`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ris.training.preemption import PREEMPT_EXIT_CODE, STOP_SIGNALS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process (``world_size == 1``: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def in_torchrun() -> bool:
    """True inside a worker started by torchrun (it sets these variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_context() -> DistContext:
    """Rank, world size and local rank from torchrun's environment (a single process otherwise)."""
    if not in_torchrun():
        return DistContext()
    return DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def select_device(preference: str | None, local_rank: int = 0) -> torch.device:
    """``auto``: this process's GPU when CUDA is present, else the CPU; ``cpu``, ``cuda`` or ``cuda:i``."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device is cuda but no CUDA device is available; use device: auto or cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process with local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                f"start at most one process per GPU (the train rule's gpu resource)"
            )
        return torch.device("cuda", local_rank)
    return torch.device(pref)


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[tuple[DistContext, torch.device]]:
    """This process's (rank context, device) for the duration; under torchrun it joins the process group
    (NCCL for GPUs, gloo for the CPU: how it is tested) and leaves it at the end."""
    ctx = env_context()
    dev = select_device(device, ctx.local_rank)
    if ctx.enabled and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group", ctx.rank, ctx.world_size, backend)
    try:
        yield ctx, dev
    finally:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum a few numbers over the ranks (float64, one collective); identity on a single process."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def end_step(
    bn_stats: BatchNormStatsMerger, values: list[float], ctx: DistContext, device: torch.device
) -> list[float]:
    """The collectives that end an optimizer step, after its last backward: the BatchNorm statistics merged
    (:class:`BatchNormStatsMerger`), then ``values`` summed over the ranks (one collective for all of them)."""
    bn_stats.merge()
    return all_reduce_sum(values, ctx, device)


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating."""
    if ctx.enabled:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def no_buffer_broadcast() -> dict[str, bool]:
    """DDP keyword that stops it from copying rank 0's buffers at every forward (renamed in torch 2.14)."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def launch(worker_args: list[str], nproc: int, marker: Path, grace_s: float = 60.0) -> int:
    """Run ``python -m ris <worker_args>`` in ``nproc`` processes under torchrun; return the exit status.

    torchrun reports any failed worker as status 1 and dies on SIGUSR1, so this process stands in front
    of it: the first SIGTERM/SIGUSR1 it gets is passed to torchrun as SIGTERM (which torchrun passes to
    the workers: they save and exit 75). It is a child subreaper, so workers whose torchrun died first
    (a cluster signalling every process at once) are still waited for, up to ``grace_s``. It returns
    :data:`PREEMPT_EXIT_CODE` when a signal arrived or rank 0 wrote ``marker`` after saving.
    """
    marker = Path(marker)
    marker.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "ris", *worker_args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subreaper = _become_subreaper()
    proc = subprocess.Popen(cmd, env=env)
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not received:  # once: a second SIGTERM makes torchrun abandon its workers' shutdown
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
        received.append(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        rc = proc.wait()
        if subreaper:  # orphaned workers are now our children: wait for them
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    time.sleep(0.1)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if marker.exists() or (received and rc != 0):
        log.warning("training stopped by a signal (%s): exit status %d", marker, PREEMPT_EXIT_CODE)
        return PREEMPT_EXIT_CODE
    if rc:
        log.error("torchrun exited with status %d (the workers' errors are above)", rc)
    return rc


def _become_subreaper() -> bool:
    """Linux: adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so they can be waited for."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class BatchNormStatsMerger:
    """Under DDP, running BatchNorm statistics equal to one process accumulating all micro-batches in order.

    DDP's default (``broadcast_buffers``) keeps rank 0's statistics, updated by rank 0's micro-batches only,
    so a 2-GPU model would evaluate differently from the same run on 1 GPU with accumulation. With
    momentum ``m`` a process running ``A`` micro-batches turns ``r`` into ``(1 - m)^A r + d_rank``; one
    process running all ``W * A`` micro-batches of the step, rank by rank, would end with
    ``(1 - m)^(W A) r + sum_k (1 - m)^((W - 1 - k) A) d_k``. :meth:`merge` computes that with one
    all-reduce per optimizer step (in :func:`end_step`). SyncBatchNorm layers (identical
    statistics on every rank) are skipped; layers with ``momentum=None`` (cumulative average) get the mean over
    ranks.
    """

    def __init__(self, module: nn.Module, ctx: DistContext, accumulation: int):
        from torch.nn.modules.batchnorm import _BatchNorm

        self.ctx, self.accumulation = ctx, accumulation
        self.layers = [
            m
            for m in module.modules()
            if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm) and m.track_running_stats
        ]
        self._before = self._statistics()  # where the next step starts from

    @property
    def active(self) -> bool:
        return self.ctx.enabled and bool(self.layers)

    def _statistics(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Copies of the running statistics (none on one process)."""
        if not self.active:
            return []
        return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in self.layers]

    @torch.no_grad()
    def merge(self) -> None:
        """After a step's last forward: every rank gets the sequential single-process statistics, where the next
        step starts from (nothing changes them between steps: validation runs in eval mode)."""
        if not self.active:
            return
        w, a, k = self.ctx.world_size, self.accumulation, self.ctx.rank
        parts = []
        for m, (mean0, var0, _) in zip(self.layers, self._before):
            if m.momentum is None:
                parts += [m.running_mean / w, m.running_var / w]
                continue
            decay = (1.0 - m.momentum) ** a
            weight = (1.0 - m.momentum) ** ((w - 1 - k) * a)
            parts += [(m.running_mean - decay * mean0) * weight, (m.running_var - decay * var0) * weight]
        flat = torch.cat([p.reshape(-1).double() for p in parts])
        dist.all_reduce(flat)
        offset = 0
        for m, (mean0, var0, count0) in zip(self.layers, self._before):
            n = m.running_mean.numel()
            d_mean, d_var = flat[offset : offset + n], flat[offset + n : offset + 2 * n]
            offset += 2 * n
            if m.momentum is None:
                mean, var = d_mean, d_var
            else:
                total = (1.0 - m.momentum) ** (w * a)
                mean, var = total * mean0.double() + d_mean, total * var0.double() + d_var
            m.running_mean.copy_(mean.view_as(m.running_mean))
            m.running_var.copy_(var.view_as(m.running_var))
            m.num_batches_tracked.copy_(count0 + w * a)
        self._before = self._statistics()


def wrap_for_processes(
    core: nn.Module, ctx: DistContext, device: torch.device, accumulation: int
) -> tuple[nn.Module, BatchNormStatsMerger]:
    """The model the step calls (``core``, or its DDP wrapper under torchrun) and the BatchNorm statistics
    merger; called once the weights are restored."""
    model = core
    if ctx.enabled:
        model = nn.parallel.DistributedDataParallel(
            core,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
            **no_buffer_broadcast(),  # BatchNormStatsMerger keeps the ranks' statistics identical
        )
    return model, BatchNormStatsMerger(core, ctx, accumulation)
