"""MLflow tracking: one run per trained model, resumed by id, robust to concurrent SQLite writers.

We use ``MlflowClient`` with explicit run ids (no global "active run"), so training and the evaluation
jobs of one model all log into the same MLflow run. Writes retry when SQLite reports a lock (or an
``http://`` tracking server is briefly unreachable). Several processes creating a new SQLite store at once
race in its schema migration (MLflow 3.17: alembic "expected to match one row", "duplicate column name"), so
every entry point creates or upgrades the store under a file lock beside it (``init_store``): the DAG's
``mlflow_init`` job, ``ris train`` and ``ris evaluate`` alike. The same code logs to
``MLFLOW_TRACKING_URI=http://...`` (a real server).
"""

from __future__ import annotations

import fcntl
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_PARAM_LEN = 500
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit

TRANSIENT = (
    "database is locked",
    "database table is locked",
    "busy",
    "timed out",
    "timeout",
    "connection refused",
    "connection reset",
    "connection aborted",
    "max retries exceeded",
    "temporarily unavailable",
    "503",
    "502",
    "429",
)


def _is_transient(err: Exception) -> bool:
    text = str(err).lower()
    return any(s in text for s in TRANSIENT)


RETRIES = {"count": 0}  # transient failures retried in this process (for logs and tests)


def retry(fn: Callable[[], T], attempts: int = 12, base_delay: float = 0.05) -> T:
    """Call ``fn``, retrying with jittered exponential backoff while the store reports a lock.

    12 attempts wait up to ~2.5 minutes in all: long enough for dozens of jobs writing to one SQLite file.
    """
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # MLflow wraps SQLAlchemy errors in MlflowException
            if i == attempts - 1 or not _is_transient(e):
                raise
            RETRIES["count"] += 1
            log.debug("MLflow store busy (%s): retry %d", str(e).splitlines()[0][:200], i + 1)
            time.sleep(base_delay * 2**i * (0.5 + random.random()))
    raise AssertionError("unreachable")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} with values as strings (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:MAX_PARAM_LEN]
    return out


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<store>.lock`` beside a SQLite store (nothing to lock for a server)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def init_store(uri: str) -> None:
    """Create (or upgrade) the tracking store, one process at a time: safe from any number of processes."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


class Tracker:
    """Logs one run into an MLflow store; ``run_id`` is kept in checkpoints to resume the same run."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        init_store(uri)  # a new store is created under the lock, whoever comes first
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        self.attempts = 12  # per write; lowered where waiting is worse than losing a write (preemption)
        self.resumed = False
        if run_id is not None:
            try:
                retry(lambda: self.client.update_run(run_id, status="RUNNING"))
                self.resumed = True
            except Exception as e:
                if "RESOURCE_DOES_NOT_EXIST" not in str(e) and "not found" not in str(e).lower():
                    raise
                log.warning("MLflow run %s is not in %s (tracking URI changed?): starting a new run", run_id, uri)
        if self.resumed:
            self.run_id: str = run_id  # type: ignore[assignment]
            if tags:  # a resumed attempt may run elsewhere: refresh device, host, versions
                self.set_tags(tags)
        else:
            exp_id = retry(lambda: self._experiment_id(experiment))
            run = retry(lambda: self.client.create_run(exp_id, tags=tags or {}, run_name=run_name))
            self.run_id = run.info.run_id

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the store, not in the working dir
            location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        existing = retry(lambda: self.client.get_run(self.run_id)).data.params
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):
            retry(
                lambda chunk=new[i : i + 100]: self.client.log_batch(self.run_id, params=chunk), attempts=self.attempts
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.log_records([(k, float(v), step or 0) for k, v in metrics.items()])

    def log_records(self, records: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) triples in as few batched writes as MLflow allows."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k.replace("@", "_at_"), float(v), ts, int(step)) for k, v, step in records]
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            retry(
                lambda chunk=batch[i : i + MAX_METRICS_PER_BATCH]: self.client.log_batch(self.run_id, metrics=chunk),
                attempts=self.attempts,
            )

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` was already logged (to log what a killed attempt missed, and only that)."""
        key = key.replace("@", "_at_")
        return {m.step for m in retry(lambda: self.client.get_metric_history(self.run_id, key))}

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        retry(lambda: self.client.log_batch(self.run_id, tags=batch), attempts=self.attempts)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), attempts=self.attempts)

    def finish(self, status: str = "FINISHED") -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status=status), attempts=self.attempts)
