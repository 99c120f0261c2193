"""MLflow tracking: retries on locks, 8 concurrent writers on one SQLite store, a real ``mlflow server``, the
loss terms per epoch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ris.training.run_log import runtime_tags
from ris.training.tracking import RETRIES, init_store, retry
from tests.helpers import REPO, finish, make_config, start_cli, train_here


def test_retry_backs_off_on_locks_and_raises_other_errors():
    calls = {"n": 0}

    def locked_twice() -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    before = RETRIES["count"]
    assert retry(locked_twice, base_delay=0.001) == "ok" and calls["n"] == 3
    assert RETRIES["count"] == before + 2

    def broken() -> None:
        calls["n"] += 1
        raise ValueError("no such table: runs")

    calls["n"] = 0
    with pytest.raises(ValueError, match="no such table"):
        retry(broken, base_delay=0.001)
    assert calls["n"] == 1  # not a lock: no retry


def test_runtime_tags_name_code_versions_and_device():
    import torch

    tags = runtime_tags("cpu", world_size=2, precision="fp32")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == tags["mlflow.source.git.commit"] == (head or "unknown")
    assert tags["torch_version"] == torch.__version__ and tags["cuda_version"] == str(torch.version.cuda or "none")
    assert tags["device"] == "cpu" and tags["device_name"].startswith("cpu")
    assert tags["world_size"] == "2" and tags["precision"] == "fp32"


def _writer(uri: str, go: str, index: int, steps: int, results) -> None:
    """One of the concurrent jobs: open a run, log params, ``steps`` batched metric writes, tags, finish."""
    from ris.training.tracking import RETRIES, Tracker

    while not Path(go).exists():  # start together
        time.sleep(0.002)
    t0 = time.monotonic()
    tracker = Tracker(uri, "concurrency", tags={"writer": str(index)}, run_name=f"writer-{index}")
    tracker.log_params({"writer": index, "train": {"lr": 0.001, "batch_size": 32}})
    for step in range(steps):
        tracker.log_metrics({"loss": index + step / 1000, "step_copy": step}, step=step)
    tracker.set_tags({"done": "yes"})
    tracker.finish()
    results.put((tracker.run_id, RETRIES["count"], time.monotonic() - t0))


def _fan_out(uri: str, go: Path, writers: int, steps: int) -> tuple[list[Any], Any]:
    """``writers`` forked processes that wait for ``go``, then write to ``uri``; their results come on the queue."""
    import multiprocessing

    import mlflow.tracking  # noqa: F401 (imported once here, shared by the forked writers)

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, str(go), i, steps, results)) for i in range(writers)]
    for p in procs:
        p.start()
    return procs, results


def test_writers_on_a_new_store_create_it_one_at_a_time(tmp_path):
    """Three trackers opened at the same moment on a store nobody created: the file lock lets all three in.

    Without ``init_store``'s lock (MLflow 3.17.2) this failed 4 times in 4 (alembic "expected to match one
    row", "duplicate column name: step"), measured 2026-12-07.
    """
    uri = "sqlite:///" + str(tmp_path / "new" / "mlflow.db")
    go = tmp_path / "go"
    procs, results = _fan_out(uri, go, 3, 2)
    time.sleep(0.5)
    go.touch()
    done = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len({run_id for run_id, _, _ in done}) == 3


def test_two_trainings_started_together_on_a_new_store(prepared_tiny, tmp_path):
    """Two ``ris train`` started at the same moment, no ``mlflow-init`` before: both finish, two runs logged."""
    uri = "sqlite:///" + str(tmp_path / "fresh" / "mlflow.db")
    started = []
    for name in ("a", "b"):
        cfg = make_config(prepared_tiny, uri, "together", epochs=1, max_steps_per_epoch=1)
        started.append(start_cli(cfg, tmp_path / name))
    codes = [finish(proc, log) for proc, log in started]
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for _, log in started)
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments() if e.name == "together"]
    )
    assert len(runs) == 2 and all("train_loss" in r.data.metrics for r in runs)  # evaluation finishes the runs
    assert (tmp_path / "a" / "model.pt").is_file() and (tmp_path / "b" / "model.pt").is_file()


def test_eight_concurrent_writers_lose_no_metric(tmp_path):
    """8 processes (forked after the slow imports) write to one SQLite store at the same moment."""
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    go, steps = tmp_path / "go", 30
    procs, results = _fan_out(uri, go, 8, steps)
    init_store(uri)  # once, before the fan-out (the pipeline's mlflow_init rule); after the fork on purpose
    go.touch()
    done = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    run_ids = {run_id: retries for run_id, retries, _ in done}
    seconds = max(s for _, _, s in done)
    assert len(run_ids) == 8

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    logged = 0
    for run_id in run_ids:
        run = client.get_run(run_id)
        index = int(run.data.tags["writer"])
        assert run.info.status == "FINISHED" and run.data.tags["done"] == "yes"
        assert run.data.params["train.batch_size"] == "32"
        loss = client.get_metric_history(run_id, "loss")
        copy = client.get_metric_history(run_id, "step_copy")
        assert sorted(m.step for m in loss) == list(range(steps)) == sorted(m.step for m in copy)
        assert all(m.value == pytest.approx(index + m.step / 1000) for m in loss)
        logged += len(loss) + len(copy)
    experiments = [e for e in client.search_experiments() if e.name == "concurrency"]
    assert len(experiments) == 1  # created once although 8 processes raced to create it
    print(
        f"8 writers at once: {logged} metrics in {8 * steps} batched writes, all found; {seconds:.1f} s; "
        f"{sum(run_ids.values())} lock retries"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts), stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_training_logs_to_a_real_mlflow_server(mlflow_server, prepared_tiny, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from ris.config import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    uri = tracking_uri({"results_dir": str(tmp_path)})  # the environment variable wins over the SQLite default
    assert uri == mlflow_server
    cfg = make_config(prepared_tiny, uri, experiment="ris-demo-synthetic", epochs=1, max_steps_per_epoch=2)
    summary = train_here(cfg, tmp_path / "run")

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    tags, params = run.data.tags, run.data.params
    for key in ("dataset", "method", "backbone", "num_masks", "seed", "git_commit", "torch_version", "cuda_version"):
        assert tags[key], key
    assert tags["device_name"].startswith("cpu") and tags["world_size"] == "1" and tags["precision"] == "fp32"
    assert params["train.batch_size"] == "4" and params["derived.steps_per_epoch"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step")) == [1, 2]
    assert "val_oIoU" in run.data.metrics and "best_val_oIoU" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.json", "history.jsonl"}


@pytest.mark.parametrize(
    ("method", "options", "terms"),
    [
        (
            "coupalign",
            {"aux_weight": 0.5, "proposal_weight": 0.7, "selection_weight": 0.2, "query_layers": 1},
            {"mask", "aux", "proposal", "selection"},
        ),
        ("jmceln", {"num_stages": 2}, {"mask", "stage1", "stage2", "aux", "proposal", "selection"}),
    ],
)
def test_every_loss_term_is_logged_per_epoch(prepared_tiny, tmp_path, method, options, terms):
    """Each term of the method's loss dict, averaged over the epoch's steps (2 accumulated micro-batches each),
    is in every line of history.jsonl and an MLflow metric ``train_<term>`` per epoch (SQLite store)."""
    from mlflow.tracking import MlflowClient

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    init_store(uri)
    model = {"method": method, "num_masks": 4, "options": {"dice_weight": 1.0, **options}}
    cfg = make_config(prepared_tiny, uri, experiment=f"terms-{method}", model=model, max_steps_per_epoch=2)
    summary = train_here(cfg, tmp_path / "run")

    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    client = MlflowClient(tracking_uri=uri)
    for term in terms:
        logged = client.get_metric_history(summary["mlflow_run_id"], f"train_{term}")
        assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
            (r["epoch"], pytest.approx(r[f"train_{term}"], rel=1e-12)) for r in history
        ], term
    for r in history:
        assert {k[len("train_") :] for k in r if k.startswith("train_")} == {"loss"} | terms
        if method == "coupalign":  # loss = mask + weighted aux, proposal, selection: the epoch means keep that sum
            weighted = 0.5 * r["train_aux"] + 0.7 * r["train_proposal"] + 0.2 * r["train_selection"]
            assert r["train_loss"] == pytest.approx(r["train_mask"] + weighted, rel=1e-6)
        else:  # the last stage's mask loss is the mask term
            assert r["train_mask"] == r[f"train_stage{options['num_stages']}"]
