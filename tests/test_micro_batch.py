"""``train.micro_batch_size: auto`` (halve on out-of-memory, redo the step or the validation batch) and
run-config errors.

Out-of-memory is injected on the CPU: the loss raises ``torch.OutOfMemoryError`` for micro-batches of
more than ``k`` items, after the forward (so the failed attempt has also updated BatchNorm statistics);
in validation, ``predict`` raises it for batches of more than ``k`` items.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from ris.training.checkpoint import load_checkpoint
from ris.training.run_config import RunConfigError, check_run_config
from tests.helpers import REPO, history_metrics, make_config, mlflow_run, train_here

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def patch_loss(monkeypatch, most: int) -> list[int]:
    """RISModel.loss raises out-of-memory on micro-batches of more than ``most`` items; returns the sizes seen."""
    from ris.models.base import RISModel

    sizes: list[int] = []
    original = RISModel.loss

    def loss(self, outputs, target):
        sizes.append(int(target.shape[0]))
        if target.shape[0] > most:
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(self, outputs, target)

    monkeypatch.setattr(RISModel, "loss", loss)
    return sizes


def patch_predict(monkeypatch, most: int | None = None) -> list[int]:
    """RISModel.predict (validation) raises out-of-memory on batches of more than ``most`` items; returns the
    sizes seen."""
    from ris.models.base import RISModel

    sizes: list[int] = []
    original = RISModel.predict

    def predict(self, images, input_ids, attention_mask, size):
        sizes.append(int(images.shape[0]))
        if most is not None and images.shape[0] > most:
            raise OOM("CUDA out of memory. Tried to allocate 1.00 GiB (injected in validation)")
        return original(self, images, input_ids, attention_mask, size)

    monkeypatch.setattr(RISModel, "predict", predict)
    return sizes


def test_auto_micro_batch_halves_on_oom_and_matches_a_run_started_halved(
    prepared_tiny, store, reference_run, tmp_path, monkeypatch, caplog
):
    """Global batch 4, auto: step 1 runs 4 items at once, fails, and is redone as 2 x 2 accumulated; the run
    then equals the reference run (micro-batches of 2 from the start): same steps, weights, BN statistics."""
    sizes = patch_loss(monkeypatch, most=2)
    val_sizes = patch_predict(monkeypatch)
    cfg = make_config(prepared_tiny, store, experiment="micro-auto", micro_batch_size="auto")
    out = tmp_path / "auto"
    with caplog.at_level(logging.INFO, logger="ris"):
        summary = train_here(cfg, out)
    assert sizes == [4] + [2] * 12  # one failed attempt, then 6 steps x 2 micro-batches: no step lost or doubled
    assert "out of memory at epoch 1 step 1 (global step 1): micro-batches of 2 now, 2 accumulated" in caplog.text
    assert val_sizes == [2] * 36  # validation follows the halved micro-batch (36 val samples, 2 validations)

    ref, got = load_checkpoint(reference_run / "work" / "last.pt"), load_checkpoint(out / "work" / "last.pt")
    assert summary["global_step"] == got["global_step"] == ref["global_step"] == 6
    assert got["micro_batch_size"] == 2 and ref["micro_batch_size"] == 2
    for name, tensor in ref["model"].items():  # parameters and BatchNorm running statistics
        assert torch.allclose(got["model"][name].double(), tensor.double(), rtol=1e-6, atol=1e-7), name
    assert got["optimizer"]["state"][0]["step"] == ref["optimizer"]["state"][0]["step"] == 6
    assert got["scheduler"] == ref["scheduler"]
    for mine, theirs in zip(history_metrics(out), history_metrics(reference_run), strict=True):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-9)

    client, run = mlflow_run(store, got["mlflow_run_id"])
    assert sorted(m.value for m in client.get_metric_history(run.info.run_id, "micro_batch_size")) == [2, 4]
    assert run.data.tags["micro_batch_size"] == "2" and run.data.tags["accumulation_steps"] == "2"
    assert run.data.params["train.micro_batch_size"] == "auto"

    # A resumed run keeps the halved size (carried in last.pt) instead of starting again from 4.
    sizes.clear()
    train_here(make_config(prepared_tiny, store, experiment="micro-auto", micro_batch_size="auto", epochs=3), out)
    assert sizes == [2] * 6 and load_checkpoint(out / "work" / "last.pt")["global_step"] == 9


def test_auto_micro_batch_of_one_out_of_memory_is_a_clear_error(prepared_tiny, store, tmp_path, monkeypatch):
    from ris.training.train import TrainingOOMError

    sizes = patch_loss(monkeypatch, most=0)
    cfg = make_config(prepared_tiny, store, experiment="micro-auto-fail", micro_batch_size="auto")
    with pytest.raises(TrainingOOMError, match="micro-batches of 1") as e:
        train_here(cfg, tmp_path / "fail")
    assert sizes == [4, 2, 1] and "Even micro-batches of 1 do not fit" in str(e.value)


def test_validation_follows_the_micro_batch_and_halves_on_oom(prepared_tiny, store, tmp_path, monkeypatch, caplog):
    """auto, global batch 4: training runs micro-batches of 4 and so does validation (not 8); an injected
    out-of-memory above 2 items in validation halves its batch and redoes it, with the metrics of a run
    that had the memory, logged (line and MLflow ``val_batch_size``); training is not affected."""
    cfg = make_config(prepared_tiny, store, experiment="val-oom", micro_batch_size="auto", epochs=1)
    cfg["train"]["max_steps_per_epoch"] = 1
    sizes = patch_predict(monkeypatch)
    train_here(cfg, tmp_path / "fits")
    assert sizes == [4] * 9  # 36 val samples in batches of the micro-batch in use

    sizes = patch_predict(monkeypatch, most=2)
    with caplog.at_level(logging.INFO, logger="ris"):
        summary = train_here(cfg, tmp_path / "oom")
    assert sizes == [4] + [2] * 18  # the failed batch redone in halves, the rest in halves from then on
    assert "out of memory in the validation after epoch 1: batches of 2 now (the batch is redone)" in caplog.text
    [oom_record], [fits_record] = history_metrics(tmp_path / "oom"), history_metrics(tmp_path / "fits")
    assert oom_record == pytest.approx(fits_record, rel=1e-9) and oom_record["val_oIoU"] > 0
    fits, oom = load_checkpoint(tmp_path / "fits" / "model.pt"), load_checkpoint(tmp_path / "oom" / "model.pt")
    assert all(torch.equal(oom["model"][k], v) for k, v in fits["model"].items())
    client, _ = mlflow_run(store, summary["mlflow_run_id"])
    assert [(m.step, m.value) for m in client.get_metric_history(summary["mlflow_run_id"], "val_batch_size")] == [
        (1, 2.0)
    ]


def test_validation_out_of_memory_with_a_fixed_micro_batch_is_a_clear_error(
    prepared_tiny, store, tmp_path, monkeypatch
):
    from ris.training.train import TrainingOOMError

    cfg = make_config(prepared_tiny, store, experiment="val-oom-fixed", epochs=1)  # micro_batch_size 2
    cfg["train"]["max_steps_per_epoch"] = 1
    sizes = patch_predict(monkeypatch, most=0)
    with pytest.raises(TrainingOOMError, match="in the validation after epoch 1 with batches of 2") as e:
        train_here(cfg, tmp_path / "fail")
    assert sizes == [2] and "set train.micro_batch_size to auto" in str(e.value)


def test_run_config_errors_name_the_missing_section_or_key():
    cfg = make_config({"prepared": "p", "images": "i"}, "sqlite:///x.db")
    check_run_config(cfg)
    with pytest.raises(RunConfigError, match=r"section 'train' misses train\.batch_size \(expected: train\.image_size"):
        check_run_config({**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "batch_size"}})
    with pytest.raises(RunConfigError, match="train.micro_batch_size is 'big'"):
        check_run_config({**cfg, "train": {**cfg["train"], "micro_batch_size": "big"}})

    # Through the command line: one line, exit status 2.
    partial = {k: v for k, v in cfg.items() if k != "data"}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ris", "train", "--run-config", json.dumps(partial), "--out", "unused-run-dir"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "ris train: error: run config: missing section 'data' (expected: data.prepared_dir, data.images_dir)"
    )
    assert not (REPO / "unused-run-dir").exists()
