"""Multi-process training: device choice, process group (NCCL on GPUs, gloo on CPU), collectives, launcher.

``ris train --nproc N`` (the Snakemake rule passes its ``gpu`` resource) runs one process when N <= 1 and
otherwise re-launches itself under ``torchrun --standalone --nproc_per_node N`` (:func:`launch`); the
workers read their rank from the environment torchrun sets (:func:`setup`). Only rank 0 writes files
and talks to MLflow; every rank takes part in the collectives below, in the same order.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ris.engine.preemption import PREEMPT_EXIT_CODE, STOP_SIGNALS

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
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(pref)


def setup(device: torch.device) -> DistContext:
    """Join the process group torchrun describes: NCCL for GPUs, gloo for the CPU (how it is tested)."""
    ctx = env_context()
    if ctx.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group", ctx.rank, ctx.world_size, backend)
    return ctx


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum a few numbers over the ranks (float64, one collective); identity on a single process."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True when ``flag`` is set on at least one rank (so all ranks take the same branch)."""
    return all_reduce_sum([1.0 if flag else 0.0], ctx, device)[0] > 0


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


def launch(worker_args: list[str], nproc: int, marker: Path, grace_s: float = 120.0) -> int:
    """Run ``python -m ris <worker_args>`` in ``nproc`` processes under torchrun; return the exit status.

    torchrun reports any failed worker as status 1 and does not handle SIGUSR1, so this process stands in
    front of it: it forwards the first SIGTERM/SIGUSR1 to torchrun (which passes it to the workers) and
    returns :data:`PREEMPT_EXIT_CODE` when rank 0 wrote ``marker`` (its checkpoint is saved), waiting up
    to ``grace_s`` for it after a signal, since workers live in their own sessions and may outlive
    torchrun when the cluster signals every process at once.
    """
    marker = Path(marker)
    marker.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "ris", *worker_args,
    ]  # fmt: skip
    env = dict(os.environ)
    env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(cmd, env=env)
    received: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if not received:  # once: a second signal would make torchrun abandon its workers' shutdown
            proc.send_signal(signum)
        received.append(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        rc = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received and not marker.exists():
        deadline = time.monotonic() + grace_s
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    if marker.exists():
        return PREEMPT_EXIT_CODE
    return rc
