"""MLflow tracking: one run per trained model, resumed by id, robust to concurrent SQLite writers.

We use ``MlflowClient`` with explicit run ids (no global "active run"), so training and the evaluation
jobs of one model all log into the same MLflow run. Writes retry when SQLite reports a lock, and the
store itself is created once before the training fan-out (``ris mlflow-init``), because several
processes creating a new SQLite store at once race in its schema migration.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_PARAM_LEN = 500


def _is_transient(err: Exception) -> bool:
    text = str(err).lower()
    return any(s in text for s in ("database is locked", "database table is locked", "busy", "timed out"))


def retry(fn: Callable[[], T], attempts: int = 12, base_delay: float = 0.05) -> T:
    """Call ``fn``, retrying with jittered exponential backoff while the store reports a lock."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # MLflow wraps SQLAlchemy errors in MlflowException
            if i == attempts - 1 or not _is_transient(e):
                raise
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


def init_store(uri: str) -> None:
    """Create (or upgrade) the tracking store once, in this single process."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
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

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            exp_id = retry(lambda: self._experiment_id(experiment))
            run = retry(lambda: self.client.create_run(exp_id, tags=tags or {}, run_name=run_name))
            run_id = run.info.run_id
        else:
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        self.run_id = run_id

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
            retry(lambda chunk=new[i : i + 100]: self.client.log_batch(self.run_id, params=chunk))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k.replace("@", "_at_"), float(v), ts, step or 0) for k, v in metrics.items()]
        retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            retry(lambda k=k, v=v: self.client.set_tag(self.run_id, k, v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        retry(lambda: self.client.set_terminated(self.run_id, status=status))
