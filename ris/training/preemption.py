"""Preemption: SIGTERM / SIGUSR1 (what SLURM sends before a preemption or the time limit) stop training.

The handler only raises a flag; the training loop checks it at optimizer-step boundaries (where the state
is consistent), saves ``last.pt`` and raises :class:`Preempted`; ``ris train`` then exits with status
:data:`PREEMPT_EXIT_CODE` (75, ``EX_TEMPFAIL``), which the SLURM profile treats as "requeue me".
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

PREEMPT_EXIT_CODE = 75
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


def marker_path(out_dir: Path) -> Path:
    """File rank 0 writes after saving on a signal: how a launcher in front of torchrun knows to exit 75."""
    return Path(out_dir) / "work" / "preempted.json"


class Preempted(Exception):  # noqa: N818 (not an error: a requested stop)
    """Training stopped on a signal after saving its checkpoint (the message names it); requeue the job."""


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a cluster signals every process; the main process stops the workers."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


_EARLY: list[int] = []  # signals caught by install_early_handlers before training started


def install_early_handlers() -> None:
    """Catch SIGTERM/SIGUSR1 from process start (imports, data loading) on; :func:`stop_requests` takes them over."""
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, lambda signum, frame: _EARLY.append(signum))


@dataclass
class StopRequest:
    """The stop flag of a training process: ``requested`` once SIGTERM/SIGUSR1 arrived (see :func:`stop_requests`)."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_requests(out_dir: Path, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """For the duration, SIGTERM/SIGUSR1 set a :class:`StopRequest` instead of killing the process; the previous
    handlers come back after. A marker a previous attempt left in ``out_dir`` is removed first.

    Outside the main thread (where Python cannot install handlers) the flag stays unset.
    """
    marker_path(out_dir).unlink(missing_ok=True)
    stop, previous = StopRequest(), {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            previous[s] = signal.signal(s, stop._handler)
    if _EARLY:
        stop._handler(_EARLY[0], None)
        _EARLY.clear()
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
