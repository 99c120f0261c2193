"""The training loop: AdamW + poly LR, validation every epoch, checkpoints, JSON lines, MLflow.

Layout of a run directory::

    config.json        resolved run configuration (also inside every checkpoint)
    work/last.pt       model, optimizer, scheduler, RNG states, epoch, MLflow run id (atomic, every epoch)
    work/best.pt       best model by validation oIoU
    work/history.jsonl one JSON line of metrics per epoch
    model.pt           published copy of work/best.pt when training completes (the Snakemake output)
    history.jsonl      published copy of work/history.jsonl

A rerun of an unfinished run resumes from ``work/last.pt`` and keeps logging into the same MLflow run.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ris.data.dataset import ReferSplit
from ris.data.prepare import read_split
from ris.data.tokenizer import build_vocab, load_tokenizer
from ris.engine.checkpoint import load_checkpoint, save_checkpoint
from ris.engine.evaluate import run_inference
from ris.engine.tracking import Tracker
from ris.metrics import summarize
from ris.models import ModelConfig, build_model
from ris.utils import append_jsonl, atomic_path, read_jsonl, seed_everything, write_json

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def poly_lambda(total_steps: int, power: float):
    """LAVT's polynomial decay: lr * (1 - step / total) ** power."""
    return lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain values and tensors (loadable with weights_only)."""
    import random

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])


def build_tokenizer(cfg: dict[str, Any], train_sentences: list[str]):
    """Pretrained tokenizer when a pretrained text encoder is named, else one built from the train split."""
    pretrained = cfg["model"].get("pretrained_text")
    if pretrained:
        return load_tokenizer(pretrained, None), None
    vocab = build_vocab(train_sentences)
    return load_tokenizer(None, vocab), vocab


def train(cfg: dict[str, Any], out_dir: Path, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train one run described by the resolved config ``cfg`` into ``out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", cfg)
    tcfg = cfg["train"]
    seed = int(cfg["seed"])
    seed_everything(seed)
    dev = torch.device(device)

    prepared = Path(cfg["data"]["prepared_dir"])
    train_table = read_split(prepared / "train.parquet")
    val_table = read_split(prepared / "val.parquet")
    tokenizer, vocab = build_tokenizer(cfg, train_table["sentence"].tolist())
    size, max_tokens = int(tcfg["image_size"]), int(tcfg["max_tokens"])
    images = Path(cfg["data"]["images_dir"])
    train_ds = ReferSplit(train_table, images, size, tokenizer, max_tokens, train=True, seed=seed)
    val_ds = ReferSplit(val_table, images, size, tokenizer, max_tokens, train=False)

    vocab_size = len(tokenizer.get_vocab())
    model = build_model(ModelConfig.from_dict({**cfg["model"], "vocab_size": vocab_size})).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    steps_per_epoch = len(train_ds) // int(tcfg["batch_size"])
    if tcfg.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(tcfg["max_steps_per_epoch"]))
    if steps_per_epoch < 1:
        raise ValueError(
            f"train split has {len(train_ds)} refs, fewer than one batch of {tcfg['batch_size']}"
        )
    epochs = int(tcfg["epochs"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(epochs * steps_per_epoch, float(tcfg.get("poly_power", 0.9)))
    )

    start_epoch, best, run_id = 0, -1.0, None
    last_path = work / "last.pt"
    if last_path.exists():
        ckpt = load_checkpoint(last_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best, run_id = (
            int(ckpt["epoch"]) + 1,
            float(ckpt["best_val_oIoU"]),
            ckpt["mlflow_run_id"],
        )
        log.info("resuming %s from epoch %d", cfg["run"], start_epoch)

    tr = cfg["tracking"]
    tracker = Tracker(tr["uri"], tr["experiment"], run_id=run_id, tags=tr["tags"], run_name=cfg["run"])
    if run_id is None:
        tracker.log_params(cfg)
        tracker.log_params(
            {
                "derived": {
                    "vocab_size": vocab_size,
                    "steps_per_epoch": steps_per_epoch,
                    "parameters": sum(p.numel() for p in model.parameters()),
                }
            }
        )

    def state(epoch: int) -> dict[str, Any]:
        return {
            "config": cfg,
            "vocab": vocab,
            "vocab_size": vocab_size,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "best_val_oIoU": best,
            "mlflow_run_id": tracker.run_id,
        }

    history_path = work / "history.jsonl"
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        train_ds.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        loader = DataLoader(
            train_ds,
            batch_size=int(tcfg["batch_size"]),
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=int(tcfg.get("num_workers", 0)),
        )
        model.train()
        losses = []
        bar = tqdm(
            total=steps_per_epoch, desc=f"{cfg['run']} epoch {epoch + 1}/{epochs}", disable=not progress
        )
        for step, batch in enumerate(loader):
            if step >= steps_per_epoch:
                break
            out = model(batch["image"].to(dev), batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
            parts = model.loss(out, batch["target"].to(dev))
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{cfg['run']}: non-finite loss ({loss.item()}) at epoch {epoch + 1} step {step + 1}; "
                    f"the last good checkpoint is {last_path}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(params, float(tcfg["grad_clip"]))
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()

        val_loader = DataLoader(val_ds, batch_size=int(tcfg["batch_size"]) * 2, shuffle=False)
        inter, union, _ = run_inference(model, val_loader, dev)
        val = summarize(inter, union)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.time() - t0, 2),
            **{f"val_{k}": v for k, v in val.items()},
        }
        append_jsonl(history_path, record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        log.info("epoch %d: %s", epoch + 1, record)
        if val["oIoU"] > best:
            best = val["oIoU"]
            save_checkpoint(work / "best.pt", state(epoch))
        save_checkpoint(last_path, state(epoch))

    # Publish the outputs Snakemake waits for.
    with atomic_path(out_dir / "model.pt") as tmp:
        shutil.copyfile(work / "best.pt", tmp)
    history = read_jsonl(history_path)
    with atomic_path(out_dir / "history.jsonl") as tmp:
        shutil.copyfile(history_path, tmp)
    tracker.log_artifact(out_dir / "config.json")
    tracker.log_artifact(out_dir / "history.jsonl")
    tracker.log_metrics({"best_val_oIoU": best})
    return {"run": cfg["run"], "best_val_oIoU": best, "epochs": len(history), "mlflow_run_id": tracker.run_id}
