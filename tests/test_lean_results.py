"""Lean results: a finished run leaves model.pt (weights, config, vocabulary) and no resume state.

A preempted run keeps ``work/`` and resumes from it exactly; only once ``model.pt`` is published is
``work/`` (last.pt with the optimizer, best.pt) deleted.
"""

from __future__ import annotations

import signal

import torch

from ris.training.checkpoint import load_checkpoint, model_from_checkpoint
from ris.training.preemption import PREEMPT_EXIT_CODE
from tests.helpers import finish, history_metrics, make_config, start_cli, train_here, wait_for

# What model.pt may hold: what evaluation and `ris predict` need, and where it came from.
MODEL_KEYS = {
    "format", "config", "vocab", "vocab_size", "model",  # the network, its settings, its tokenizer
    "epoch", "global_step", "val", "best_val_oIoU", "mlflow_run_id",  # provenance
}  # fmt: skip


def test_preempted_run_keeps_work_then_finishes_lean_and_exact(prepared_tiny, store, reference_run, tmp_path):
    cfg = make_config(prepared_tiny, store, keep_work=False)
    out = tmp_path / "run"
    proc, log = start_cli(cfg, out)
    wait_for(log, r"\(global step 2\)", proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log, timeout=60) == PREEMPT_EXIT_CODE, log.read_text()[-3000:]
    assert (out / "work" / "last.pt").exists() and not (out / "model.pt").exists()  # kept for the resume

    train_here(cfg, out)  # the retry resumes from work/last.pt and completes
    assert not (out / "work").exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "history.jsonl", "model.pt"]

    model = load_checkpoint(out / "model.pt")
    assert set(model) <= MODEL_KEYS and "optimizer" not in model and "rng" not in model
    weights = sum(t.numel() * t.element_size() for t in model["model"].values())
    size = (out / "model.pt").stat().st_size
    print(f"model.pt: {size / 1e6:.2f} MB, of which weights {weights / 1e6:.2f} MB")
    assert size < weights * 1.05 + 200_000  # weights plus a little metadata, nothing else

    # exact resume still: the same best model and history as the uninterrupted reference run
    ref = load_checkpoint(reference_run / "model.pt")
    assert all(torch.equal(model["model"][k], v) for k, v in ref["model"].items())
    assert history_metrics(out) == history_metrics(reference_run)
    net, tokenizer, config = model_from_checkpoint(model)  # what `ris evaluate` and `ris predict` do
    assert config["run"] == cfg["run"] and tokenizer.get_vocab()
