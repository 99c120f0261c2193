"""The training engine: DDP equivalence, exact resume after SIGKILL, SIGTERM/SIGUSR1 -> exit 75, NaN, OOM.

Everything runs on the CPU (gloo for DDP) with a tiny LAVT (Swin, 64 px) on the ``tiny_synthetic`` set.
Reference runs train in this process (one thread); killed and distributed runs are ``ris train``
subprocesses (one thread per process), so they compute with the same kernels. The run configuration
(``tests.helpers.make_config``), the prepared set and the reference run (fixtures ``prepared_tiny``, ``store``,
``reference_run`` in ``tests/conftest.py``) are shared with the other training tests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
import torch

from ris.training.checkpoint import load_checkpoint
from ris.training.preemption import PREEMPT_EXIT_CODE
from ris.training.sampler import StepSampler, micro_seed, plan_batches
from tests.helpers import finish, history_metrics, make_config, mlflow_run, one_thread, start_cli, train_here, wait_for

# ------------------------------------------------------------------------------------------ data order


def test_micro_batches_do_not_depend_on_process_count():
    assert plan_batches(32, 1, 4) == (4, 8)
    assert plan_batches(32, 8, 4) == (4, 1)
    assert plan_batches(32, 2, None) == (16, 1)
    assert plan_batches(32, 4, 3) == (2, 4)  # the largest micro-batch <= 3 that divides 8 per process
    with pytest.raises(ValueError, match="not divisible"):
        plan_batches(32, 3, None)

    def micro_batches(world: int, start: int = 0) -> list[list[int]]:
        micro, accum = plan_batches(8, world, 2)
        per_rank = [
            list(StepSampler(32, 8, micro, accum, 3, seed=5, epoch=1, rank=r, start_step=start)) for r in range(world)
        ]
        # Step by step, rank by rank: the order in which one process would accumulate them.
        return [mb for s in range(3 - start) for r in range(world) for mb in per_rank[r][s * accum : (s + 1) * accum]]

    one, two = micro_batches(1), micro_batches(2)
    assert one == two and len(one) == 12 and all(len(mb) == 2 for mb in one)
    assert sorted(i for mb in one for i in mb) == sorted(set(i for mb in one for i in mb))  # no repeats
    assert micro_batches(1, start=2) == one[8:]  # a resumed epoch skips the consumed batches
    assert micro_batches(1) != [mb for mb in StepSampler(32, 8, 2, 4, 3, seed=5, epoch=2)]  # new order per epoch
    assert micro_seed(0, 1, 2, 3) == micro_seed(0, 1, 2, 3) != micro_seed(0, 1, 2, 4)


def test_val_every_epochs_validates_every_kth_and_the_last_epoch(prepared_tiny, store, tmp_path):
    """train.val_every_epochs 2 over 3 epochs: val_* after epochs 2 and 3 only; the best checkpoint comes
    from a validated epoch and MLflow has no validation metric for epoch 1."""
    out = tmp_path / "run"
    train_here(make_config(prepared_tiny, store, experiment="val-every", epochs=3, val_every_epochs=2), out)
    history = history_metrics(out)
    assert [("val_oIoU" in r) for r in history] == [False, True, True]
    best = torch.load(out / "model.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] in (1, 2) and best["val"]["oIoU"] == max(r["val_oIoU"] for r in history[1:])
    client, run = mlflow_run(store, best["mlflow_run_id"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_oIoU")] == [2, 3]


def test_precision_and_device_settings_on_cpu():
    from ris.training.distributed import select_device
    from ris.training.run import resolve_precision

    cpu = torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_precision("fp16", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            select_device("cuda")


# ----------------------------------------------------------------------------------------------- DDP


def test_ddp_two_processes_match_one_process_and_resume_after_sigusr1(prepared_tiny, store, reference_run, tmp_path):
    """2 gloo processes x 1 micro-batch of 2 == 1 process x 2 accumulated micro-batches (global batch 4).

    BatchNorm normalises per micro-batch in both (the micro-batches are the same), and the running
    statistics are merged into the sequential single-process ones, so parameters *and* buffers agree.
    The DDP run is also stopped by SIGUSR1 (exit 75) and resumed under torchrun again.

    (With 2 x 2 accumulated micro-batches against 1 x 4 the sums associate differently; losses and val
    metrics still agree to ~1e-7, but parameters that a normalisation right after them leaves without a
    true gradient, such as biases before a LayerNorm, take Adam steps of +-lr from pure rounding noise.)
    """
    cfg = make_config(prepared_tiny, store)
    out = tmp_path / "ddp"
    proc, log = start_cli(cfg, out, "--nproc", "2")
    wait_for(log, r"\(global step 1\)", proc)
    proc.send_signal(signal.SIGUSR1)  # to the launcher in front of torchrun, as SLURM would
    assert finish(proc, log) == PREEMPT_EXIT_CODE, log.read_text()[-3000:]
    stopped = load_checkpoint(out / "work" / "last.pt")
    assert 1 <= stopped["global_step"] < 6 and stopped["world_size"] == 2
    first_run_id = stopped["mlflow_run_id"]

    proc, log = start_cli(cfg, out, "--nproc", "2")
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    assert "resuming" in log.read_text()

    ref, got = load_checkpoint(reference_run / "work" / "last.pt"), load_checkpoint(out / "work" / "last.pt")
    assert got["global_step"] == ref["global_step"] == 6 and got["mlflow_run_id"] == first_run_id
    worst = 0.0
    for name, tensor in ref["model"].items():
        assert torch.allclose(got["model"][name].double(), tensor.double(), rtol=1e-5, atol=1e-6), name
        worst = max(worst, (got["model"][name].double() - tensor.double()).abs().max().item())
    print(f"DDP (stopped at step {stopped['global_step']}, resumed) vs one process: largest difference {worst:.2e}")
    for mine, theirs in zip(history_metrics(out), history_metrics(reference_run)):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-6)

    client, run = mlflow_run(store, first_run_id)
    assert run.data.tags["world_size"] == "2" and run.data.tags["accumulation_steps"] == "1"
    assert [m.step for m in client.get_metric_history(first_run_id, "train_loss")] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(first_run_id, "train_loss_step")) == [1, 2, 3, 4, 5, 6]


# -------------------------------------------------------------------------------------- exact resume


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(prepared_tiny, store, reference_run, tmp_path):
    cfg = make_config(prepared_tiny, store)
    out = tmp_path / "killed"
    step = random.SystemRandom().randint(1, 4)  # the kill lands during step `step + 1` (or its validation)
    proc, log = start_cli(cfg, out)
    wait_for(log, rf"\(global step {step}\)", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    saved = load_checkpoint(out / "work" / "last.pt") if (out / "work" / "last.pt").exists() else None
    print(f"killed after global step {step}; last.pt at step {saved['global_step'] if saved else None}")

    train_here(cfg, out)  # the rerun of the same job resumes from work/last.pt

    ref, got = load_checkpoint(reference_run / "work" / "last.pt"), load_checkpoint(out / "work" / "last.pt")
    for part in ("model",):
        for name, tensor in ref[part].items():
            assert torch.equal(got[part][name], tensor), f"{part}.{name} differs"
    for i, state in ref["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(got["optimizer"]["state"][i][key], tensor), f"optimizer {i}.{key} differs"
    assert got["scheduler"] == ref["scheduler"]
    assert history_metrics(out) == history_metrics(reference_run)  # exactly equal, not approximately
    best_ref, best_got = load_checkpoint(reference_run / "model.pt"), load_checkpoint(out / "model.pt")
    assert all(torch.equal(best_got["model"][k], v) for k, v in best_ref["model"].items())

    # The resumed attempt logged into the killed attempt's MLflow run, each metric exactly once.
    first_run_id = json.loads((out / "work" / "mlflow_run.json").read_text())["run_id"]
    assert got["mlflow_run_id"] == first_run_id == (saved["mlflow_run_id"] if saved else first_run_id)
    client, run = mlflow_run(store, first_run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss_step")) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------- signals


def test_sigterm_saves_and_exits_75_within_seconds(prepared_tiny, store, tmp_path):
    cfg = make_config(prepared_tiny, store, epochs=50, checkpoint_every_steps=None)
    out = tmp_path / "preempted"
    proc, log = start_cli(cfg, out)
    wait_for(log, r"\(global step 2\)", proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = finish(proc, log, timeout=60)
    seconds = time.monotonic() - t0
    print(f"SIGTERM to exit: {seconds:.2f} s")
    assert rc == PREEMPT_EXIT_CODE, log.read_text()[-3000:]
    assert seconds < 10
    ckpt = load_checkpoint(out / "work" / "last.pt")
    assert ckpt["global_step"] >= 2 and ckpt["step"] == ckpt["global_step"]  # still in epoch 1
    assert json.loads((out / "work" / "preempted.json").read_text())["step"] == ckpt["step"]
    assert "stopped by a signal" in log.read_text()
    _, run = mlflow_run(store, ckpt["mlflow_run_id"])
    assert run.info.status == "KILLED"


# ------------------------------------------------------------------------------------------ failures


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    prepared_tiny, store, tmp_path, monkeypatch, capsys
):
    from ris import cli
    from ris.models.base import RISModel

    calls = {"n": 0}
    original = RISModel.loss

    def loss(self, outputs, target):  # micro-batch 6 = the 2nd of the 2 micro-batches of step 3
        parts = original(self, outputs, target)
        calls["n"] += 1
        if calls["n"] == 6:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(RISModel, "loss", loss)
    cfg = make_config(prepared_tiny, store)
    out = tmp_path / "nan"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with one_thread():
        rc = cli.main(["train", "--run-config", str(tmp_path / "cfg.json"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "non-finite loss at epoch 1 step 3 (global step 3)" in err and "last good checkpoint" in err
    ckpt = load_checkpoint(out / "work" / "last.pt")
    assert ckpt["global_step"] == 2  # written at step 2, untouched by the failed step
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert not (out / "model.pt").exists()
    _, run = mlflow_run(store, ckpt["mlflow_run_id"])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["failure"]


def test_out_of_memory_suggests_batch_settings(prepared_tiny, store, tmp_path, monkeypatch):
    from ris.models.base import RISModel
    from ris.training.train import TrainingOOMError

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def loss(self, outputs, target):
        raise oom("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(RISModel, "loss", loss)
    with pytest.raises(TrainingOOMError) as e:
        train_here(make_config(prepared_tiny, store), tmp_path / "oom")
    message = str(e.value)
    assert "out of memory" in message and "train.micro_batch_size" in message and "accumulation" in message
