"""The training loop: AdamW + poly LR, validation every epoch, exact resume, DDP, MLflow.

Layout of a run directory::

    config.json          resolved run configuration (also inside every checkpoint)
    work/last.pt         everything needed to resume exactly (atomic; every epoch and every K steps)
    work/best.pt         best model by validation oIoU
    work/history.jsonl   one JSON line of metrics per epoch
    work/preempted.json  written when a signal stopped the run (the launcher's cue for exit status 75)
    model.pt             published copy of work/best.pt when training completes (the Snakemake output):
                         weights, run config, vocabulary (or the pretrained tokenizer's name); no optimizer
    history.jsonl        published copy of work/history.jsonl

Once ``model.pt`` and ``history.jsonl`` are published, ``work/`` is deleted (``last.pt`` alone is ~3x the
weights; ``train.keep_work: true`` keeps it). A failed, killed or preempted run never gets there, so its
``work/`` stays and the next attempt resumes from it.

Devices: ``train.device`` (``auto``: CUDA when present, else CPU), ``train.precision`` (``auto``: bf16
autocast on CUDA, fp32 on CPU; ``fp16`` adds a grad scaler), ``train.channels_last``. One code path:
on the CPU, autocast and the scaler are simply disabled.

Batches: ``train.batch_size`` is the *global* batch of one optimizer step (32 in the papers), whatever
the number of processes; ``train.micro_batch_size`` caps what one process runs per forward and gradient
accumulation makes up the rest (:mod:`ris.training.sampler`).

Resume: a rerun finds ``work/last.pt`` and continues at the same step with the same weights, optimizer,
scheduler, scaler, RNG states, data position and MLflow run. Dropout draws come from a seed derived from
(seed, epoch, step, micro-batch), so they do not depend on the process layout or on interruptions: on the
CPU a run killed at any step and resumed ends bit-identical to an uninterrupted one.

Multi-GPU: under torchrun every process trains on its micro-batches and DDP averages the gradients.
DDP runs with ``find_unused_parameters=True``: the language gate after the last backbone stage feeds a
visual stream no later stage reads, so it never gets a gradient (LAVT's official train.py does the same);
detecting unused parameters at run time also covers the method- and N-dependent branches of the other
methods, at the cost of one walk over the autograd graph per step, small next to the model's compute.
BatchNorm normalises with per-micro-batch statistics unless ``train.sync_batchnorm`` (CUDA only; LAVT's
official code uses it); the running statistics are merged after every step so that they are those of one
process accumulating the same micro-batches (:class:`ris.training.distributed.BatchNormStatsMerger`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ris.data.dataset import ReferSplit
from ris.data.prepare import read_split
from ris.data.tokenizer import build_vocab, load_tokenizer
from ris.metrics import intersection_union, summarize
from ris.models import ModelConfig, build_model
from ris.training import distributed as ddp
from ris.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ris.training.optim import build_optimizer
from ris.training.preemption import Preempted, StopRequest, ignore_stop_signals, marker_path
from ris.training.sampler import StepSampler, micro_seed, plan_batches
from ris.training.tracking import Tracker, runtime_tags
from ris.utils import atomic_path, read_json, seed_everything, write_json, write_jsonl

log = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "TrainingOOMError", "poly_lambda", "resolve_precision", "train"]

OOM_ERRORS: tuple[type[BaseException], ...] = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingOOMError(RuntimeError):
    """The device ran out of memory; the message says which settings lower the memory per step."""


def poly_lambda(total_steps: int, power: float):
    """LAVT's polynomial decay: lr * (1 - step / total) ** power."""
    return lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power


def resolve_precision(name: str | None, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on the CPU; explicit values stay."""
    name = (name or "auto").lower()
    if name not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"train.precision: {name!r} is not one of auto, bf16, fp16, fp32")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 (with a grad scaler) needs CUDA; use bf16 or fp32 on the CPU")
    return name


def build_tokenizer(cfg: dict[str, Any], train_sentences: list[str]):
    """Pretrained tokenizer when a pretrained text encoder is named, else one built from the train split."""
    pretrained = cfg["model"].get("pretrained_text")
    if pretrained:
        return load_tokenizer(pretrained, None), None
    vocab = build_vocab(train_sentences)
    return load_tokenizer(None, vocab), vocab


def train(cfg: dict[str, Any], out_dir: Path, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train one run described by the resolved config ``cfg`` into ``out_dir``; returns the summary.

    Raises :class:`Preempted` after saving ``last.pt`` when SIGTERM/SIGUSR1 arrives (``ris train`` exits
    75), :class:`NonFiniteLossError` on a NaN/inf loss and :class:`TrainingOOMError` on out-of-memory.
    """
    ctx = ddp.env_context()
    dev = ddp.select_device(device or cfg["train"].get("device"), ctx.local_rank)
    ctx = ddp.setup(dev)
    try:
        with StopRequest() as stop:
            return _Run(cfg, Path(out_dir), dev, ctx, stop, progress).run()
    finally:
        ddp.teardown(ctx)


class _Run:
    """One training attempt (fresh or resumed); see the module docstring."""

    def __init__(
        self,
        cfg: dict[str, Any],
        out_dir: Path,
        dev: torch.device,
        ctx: ddp.DistContext,
        stop: StopRequest,
        progress: bool,
    ):
        self.cfg, self.out_dir, self.dev, self.ctx, self.stop = cfg, out_dir, dev, ctx, stop
        self.work = out_dir / "work"
        self.last_path = self.work / "last.pt"
        self.progress = progress and ctx.is_main
        tcfg = self.tcfg = cfg["train"]
        self.seed = int(cfg["seed"])
        if ctx.is_main:
            self.work.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "config.json", cfg)
            marker_path(out_dir).unlink(missing_ok=True)
            for tmp in self.work.glob(".*.tmp"):  # a checkpoint being written when the job was killed
                tmp.unlink(missing_ok=True)
        seed_everything(self.seed)

        self.precision = resolve_precision(tcfg.get("precision"), dev)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.channels_last = bool(tcfg.get("channels_last", False))

        prepared = Path(cfg["data"]["prepared_dir"])
        train_table = read_split(prepared / "train.parquet")
        val_table = read_split(prepared / "val.parquet")
        tokenizer, self.vocab = build_tokenizer(cfg, train_table["sentence"].tolist())
        size, max_tokens = int(tcfg["image_size"]), int(tcfg["max_tokens"])
        images = Path(cfg["data"]["images_dir"])
        self.train_ds = ReferSplit(train_table, images, size, tokenizer, max_tokens, train=True, seed=self.seed)
        self.val_ds = ReferSplit(val_table, images, size, tokenizer, max_tokens, train=False)

        self.batch_size = int(tcfg["batch_size"])
        self.micro, self.accum = plan_batches(self.batch_size, ctx.world_size, tcfg.get("micro_batch_size"))
        self.steps_per_epoch = len(self.train_ds) // self.batch_size
        if tcfg.get("max_steps_per_epoch"):
            self.steps_per_epoch = min(self.steps_per_epoch, int(tcfg["max_steps_per_epoch"]))
        if self.steps_per_epoch < 1:
            raise ValueError(f"train split has {len(self.train_ds)} refs, fewer than one batch of {self.batch_size}")
        self.epochs = int(tcfg["epochs"])

        self.vocab_size = len(tokenizer.get_vocab())
        core = build_model(ModelConfig.from_dict({**cfg["model"], "vocab_size": self.vocab_size}))
        if ctx.enabled and dev.type == "cuda" and tcfg.get("sync_batchnorm"):
            core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
        elif ctx.enabled and tcfg.get("sync_batchnorm"):
            log.warning("train.sync_batchnorm needs CUDA; BatchNorm statistics stay per micro-batch")
        core = core.to(dev)
        ids = torch.cat([self.train_ds.input_ids, self.val_ds.input_ids])
        masks = torch.cat([self.train_ds.attention, self.val_ds.attention])
        core.text.cache_sentences(ids, masks, cfg["data"].get("text_features"))  # a frozen encoder's, once
        if self.channels_last:
            core = core.to(memory_format=torch.channels_last)
        self.core = core
        self.optimizer = build_optimizer(
            core, tcfg.get("optimizer", "adamw"), float(tcfg["lr"]), float(tcfg["weight_decay"])
        )
        self.params = [p for p in core.parameters() if p.requires_grad]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(self.epochs * self.steps_per_epoch, float(tcfg.get("poly_power", 0.9)))
        )
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.precision == "fp16")

        # Progress: epochs completed, optimizer steps done in the current epoch, and what they produced.
        self.epochs_done, self.step, self.global_step = 0, 0, 0
        self.epoch_losses: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.pending: list[list[float]] = []  # [global_step, loss, lr] not yet sent to MLflow
        self.best, run_id = -1.0, None
        self.resumed = self.last_path.exists()
        if self.resumed:
            run_id = self._restore(load_checkpoint(self.last_path))

        self.model: torch.nn.Module = core
        if ctx.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                core,
                device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=True,
                **ddp.no_buffer_broadcast(),  # BatchNormStatsMerger keeps the ranks' statistics identical
            )
        self.bn_stats = ddp.BatchNormStatsMerger(core, ctx, self.accum)
        self.tracker: Tracker | None = None
        if ctx.is_main:
            self._open_tracker(run_id)

    # ---------------------------------------------------------------------------------------- state

    def _restore(self, ckpt: dict[str, Any]) -> str | None:
        """Load a ``last.pt``; return its MLflow run id."""
        changed = _config_changes(ckpt.get("config", {}), self.cfg)
        if changed:
            log.warning("resuming with a changed configuration (%s): results may differ", ", ".join(changed))
        self.core.load_checkpoint_state(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if "epochs_done" in ckpt:
            self.epochs_done, self.step = int(ckpt["epochs_done"]), int(ckpt["step"])
        else:  # an older last.pt, written at the end of epoch ``epoch``
            self.epochs_done, self.step = int(ckpt["epoch"]) + 1, 0
        self.global_step = int(ckpt.get("global_step", self.epochs_done * self.steps_per_epoch + self.step))
        self.epoch_losses = [float(x) for x in ckpt.get("epoch_losses", [])]
        self.history = list(ckpt.get("history", []))
        self.pending = [list(x) for x in ckpt.get("pending", [])]
        self.best = float(ckpt["best_val_oIoU"])
        (log.info if self.ctx.is_main else log.debug)(
            "resuming %s at epoch %d step %d (global step %d)",
            self.cfg["run"], self.epochs_done + 1, self.step, self.global_step,
        )  # fmt: skip
        return ckpt.get("mlflow_run_id")

    def _resume_state(self) -> dict[str, Any]:
        return {
            "config": self.cfg,
            "vocab": self.vocab,
            "vocab_size": self.vocab_size,
            "epoch": self.epochs_done,
            "epochs_done": self.epochs_done,
            "step": self.step,
            "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_losses": list(self.epoch_losses),
            "history": list(self.history),
            "pending": list(self.pending),
            "model": self.core.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_val_oIoU": self.best,
            "world_size": self.ctx.world_size,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
        }

    def _save_last(self) -> None:
        """Rank 0 writes ``last.pt``, then sends the step metrics it covers to MLflow."""
        if not self.ctx.is_main:
            return
        save_checkpoint(self.last_path, self._resume_state())
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self.tracker and self.pending:
            self.tracker.log_records(
                [(k, v, int(p[0])) for p in self.pending for k, v in (("train_loss_step", p[1]), ("lr_step", p[2]))]
            )
        self.pending = []

    # -------------------------------------------------------------------------------------- MLflow

    def _open_tracker(self, run_id: str | None) -> None:
        tr = self.cfg["tracking"]
        tags = {
            **tr["tags"],
            **runtime_tags(self.dev, self.ctx.world_size, self.precision),
            "micro_batch_size": str(self.micro),
            "accumulation_steps": str(self.accum),
        }
        # Killed before its first checkpoint, an attempt still left its run id: keep logging into that run.
        run_file = self.work / "mlflow_run.json"
        if run_id is None and run_file.exists():
            previous = read_json(run_file)
            run_id = previous["run_id"] if previous.get("uri") == tr["uri"] else None
        tracker = self.tracker = Tracker(
            tr["uri"], tr["experiment"], run_id=run_id, tags=tags, run_name=self.cfg["run"]
        )
        if tracker.run_id != run_id:
            write_json(run_file, {"run_id": tracker.run_id, "uri": tr["uri"]})
        derived = {
            "vocab_size": self.vocab_size,
            "steps_per_epoch": self.steps_per_epoch,
            "parameters": sum(p.numel() for p in self.core.parameters()),
        }
        tracker.log_params({**self.cfg, "derived": derived})  # params already there are skipped
        if self.resumed:  # log what a killed attempt saved but may not have sent, and only that
            logged = tracker.logged_steps("train_loss")
            for record in self.history:
                if record["epoch"] not in logged:
                    tracker.log_metrics(_epoch_metrics(record), step=record["epoch"])
            if self.pending:
                logged = tracker.logged_steps("train_loss_step")
                self.pending = [p for p in self.pending if int(p[0]) not in logged]
                self._flush_pending()

    # ------------------------------------------------------------------------------------- training

    def run(self) -> dict[str, Any]:
        try:
            for epoch in range(self.epochs_done, self.epochs):
                self._epoch(epoch)
        except Preempted:
            raise
        except BaseException as e:
            if self.tracker:
                with contextlib.suppress(Exception):
                    self.tracker.set_tags({"failure": f"{type(e).__name__}: {e}"[:4000]})
                    self.tracker.finish("FAILED")
            raise
        return self._publish()

    def _epoch(self, epoch: int) -> None:
        t0 = time.time()
        self.train_ds.set_epoch(epoch)
        sampler = StepSampler(
            len(self.train_ds), self.batch_size, self.micro, self.accum, self.steps_per_epoch,
            self.seed, epoch, self.ctx.rank, start_step=self.step,
        )  # fmt: skip
        loader = DataLoader(
            self.train_ds,
            batch_sampler=sampler,
            num_workers=int(self.tcfg.get("num_workers", 0)),
            pin_memory=self.dev.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=ignore_stop_signals,
        )
        self.model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"{self.cfg['run']} epoch {epoch + 1}/{self.epochs}",
            disable=not self.progress,
        )
        batches = iter(loader)
        every = int(self.tcfg.get("checkpoint_every_steps") or 0)
        try:
            while self.step < self.steps_per_epoch:
                stop = self._train_step(epoch, batches)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(self.epoch_losses[-20:]):.4f}")
                if stop:
                    self._preempt(epoch)
                if every and self.global_step % every == 0 and self.step < self.steps_per_epoch:
                    self._save_last()
        finally:
            bar.close()
            del batches, loader  # DataLoader workers stop now, also when a signal or an error ends the loop

        every = int(self.tcfg.get("val_every_epochs") or 1)  # the last epoch is always validated
        val = self._validate(epoch) if (epoch + 1) % every == 0 or epoch + 1 == self.epochs else {}
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(self.epoch_losses)),
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(time.time() - t0, 2),
            **{f"val_{k}": v for k, v in val.items()},
        }
        self.history.append(record)
        self.epochs_done, self.step, self.epoch_losses = epoch + 1, 0, []
        (log.info if self.ctx.is_main else log.debug)("epoch %d: %s", epoch + 1, record)
        if not self.ctx.is_main:
            return
        if val and val["oIoU"] > self.best:
            self.best = val["oIoU"]
            save_checkpoint(self.work / "best.pt", self._best_state(epoch, val))
        save_checkpoint(self.last_path, self._resume_state())
        write_jsonl(self.work / "history.jsonl", self.history)
        if self.tracker:
            self.tracker.log_metrics(_epoch_metrics(record), step=epoch + 1)
        self._flush_pending()

    def _train_step(self, epoch: int, batches) -> bool:
        """One optimizer step over this process's micro-batches; returns whether a stop was requested."""
        total, bad = 0.0, 0
        self.bn_stats.begin()
        for a in range(self.accum):
            batch = next(batches)
            torch.manual_seed(micro_seed(self.seed, epoch, self.step, self.ctx.rank * self.accum + a))
            sync = a == self.accum - 1
            no_sync = self.model.no_sync() if self.ctx.enabled and not sync else contextlib.nullcontext()
            try:
                with no_sync:
                    with self._autocast():
                        out = self.model(*self._inputs(batch))
                        loss = self.core.loss(out, batch["target"].to(self.dev, non_blocking=True))["loss"]
                    self.scaler.scale(loss / self.accum).backward()
            except OOM_ERRORS as e:
                raise TrainingOOMError(self._oom_message(epoch, e)) from None
            value = float(loss.detach())
            if math.isfinite(value):
                total += value
            else:
                bad += 1
        self.bn_stats.merge()
        # One collective per step: the loss, non-finite losses and stop requests of all ranks.
        loss_sum, nonfinite, stops = ddp.all_reduce_sum([total, bad, float(self.stop.requested)], self.ctx, self.dev)
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            kept = "no checkpoint was written yet"
            if self.last_path.exists():
                kept = f"the last good checkpoint {self.last_path} is kept"
            raise NonFiniteLossError(
                f"{self.cfg['run']}: non-finite loss at epoch {epoch + 1} step {self.step + 1} (global step "
                f"{self.global_step + 1}); stopping without updating the weights; {kept}. Lower train.lr, set "
                f"train.grad_clip or use precision fp32/bf16 instead of fp16"
            )
        if self.tcfg.get("grad_clip"):
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, float(self.tcfg["grad_clip"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.global_step += 1
        self.epoch_losses.append(loss_sum / (self.ctx.world_size * self.accum))
        every = int(self.tcfg.get("log_every_steps") or 0)
        if every and self.global_step % every == 0:
            window = float(np.mean(self.epoch_losses[-every:]))
            lr = self.scheduler.get_last_lr()[0]
            self.pending.append([self.global_step, window, lr])
            (log.info if self.ctx.is_main else log.debug)(
                "%s epoch %d/%d step %d/%d (global step %d): loss %.5f lr %.3g",
                self.cfg["run"], epoch + 1, self.epochs, self.step, self.steps_per_epoch, self.global_step,
                window, lr,
            )  # fmt: skip
        return stops > 0

    def _preempt(self, epoch: int) -> None:
        """Save ``last.pt`` and the launcher's marker, tell MLflow (briefly: SIGKILL may be near), stop."""
        if self.ctx.is_main:
            save_checkpoint(self.last_path, self._resume_state())
            write_json(
                marker_path(self.out_dir),
                {"checkpoint": str(self.last_path), "epoch": self.epochs_done + 1, "step": self.step},
            )
        if self.tracker:  # best effort: what does not reach MLflow now is in last.pt and sent on resume
            self.tracker.attempts = 3
            with contextlib.suppress(Exception):
                self._flush_pending()
                self.tracker.finish("KILLED")
        raise Preempted(
            f"{self.cfg['run']}: stopped by a signal at epoch {epoch + 1} step {self.step} "
            f"(global step {self.global_step}); resume from {self.last_path}",
            str(self.last_path),
        )

    def _autocast(self):
        return torch.autocast(self.dev.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = batch["image"].to(self.dev, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (
            images,
            batch["input_ids"].to(self.dev, non_blocking=True),
            batch["attention_mask"].to(self.dev, non_blocking=True),
        )

    def _oom_message(self, epoch: int, err: BaseException) -> str:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (
            f"{self.cfg['run']}: out of memory on {self.dev} at epoch {epoch + 1} step {self.step + 1} with "
            f"micro-batches of {self.micro} (global batch_size {self.batch_size} = {self.ctx.world_size} "
            f"process(es) x {self.accum} accumulation step(s) x {self.micro}). Lower train.micro_batch_size: "
            f"gradient accumulation keeps the global batch_size, and so the results; precision bf16 and "
            f"channels_last also save memory, as do more GPUs (resources gpu). ({first})"
        )

    # ----------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict[str, float]:
        """Validation metrics over the whole val split; each rank evaluates a strided shard."""
        ddp.broadcast_buffers(self.core, self.ctx)  # every rank evaluates rank 0's BatchNorm statistics
        self.core.eval()
        n, w = len(self.val_ds), self.ctx.world_size
        shard = list(range(self.ctx.rank, n, w))
        bs = self.micro * 2
        loader = DataLoader(Subset(self.val_ds, shard), batch_size=bs, shuffle=False,
                            num_workers=int(self.tcfg.get("num_workers", 0)),
                            worker_init_fn=ignore_stop_signals)  # fmt: skip
        inter, union, rows = [], [], []
        batches = iter(loader)
        for _ in range(math.ceil(math.ceil(n / w) / bs)):  # the same count on every rank
            if ddp.any_rank(self.stop.requested, self.ctx, self.dev):
                self._preempt(epoch)
            batch = next(batches, None)
            if batch is None:
                continue
            target = batch["target"].to(self.dev)
            with self._autocast():
                pred = self.core.predict(*self._inputs(batch), tuple(target.shape[-2:]))
            i, u = intersection_union(pred, target)
            inter.append(i.cpu().numpy())
            union.append(u.cpu().numpy())
            rows.append(batch["row"].numpy())
        self.model.train()
        parts = ddp.gather((np.concatenate(inter), np.concatenate(union), np.concatenate(rows)), self.ctx)
        all_rows = np.concatenate([p[2] for p in parts])
        order = np.argsort(all_rows, kind="stable")  # dataset order, as on a single process
        return summarize(np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order])

    # -------------------------------------------------------------------------------------- outputs

    def _best_state(self, epoch: int, val: dict[str, float]) -> dict[str, Any]:
        return {
            "config": self.cfg,
            "vocab": self.vocab,
            "vocab_size": self.vocab_size,
            "epoch": epoch,
            "global_step": self.global_step,
            "model": self.core.checkpoint_state(),
            "val": val,
            "best_val_oIoU": self.best,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
        }

    def _publish(self) -> dict[str, Any]:
        """Rank 0 publishes the outputs Snakemake waits for."""
        summary = {
            "run": self.cfg["run"],
            "best_val_oIoU": self.best,
            "epochs": len(self.history),
            "global_step": self.global_step,
            "world_size": self.ctx.world_size,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
        }
        if not self.ctx.is_main:
            return summary
        with atomic_path(self.out_dir / "model.pt") as tmp:
            shutil.copyfile(self.work / "best.pt", tmp)
            with tmp.open("rb") as f:  # on disk before the resume state that could rebuild it is deleted
                os.fsync(f.fileno())
        write_jsonl(self.out_dir / "history.jsonl", self.history)
        if self.tracker:
            self.tracker.log_artifact(self.out_dir / "config.json")
            self.tracker.log_artifact(self.out_dir / "history.jsonl")
            self.tracker.log_metrics({"best_val_oIoU": self.best})
        if not self.tcfg.get("keep_work", False):  # lean results: the run is complete, its resume state served
            shutil.rmtree(self.work, ignore_errors=True)  # a leftover costs space only: never fail a finished run
            if self.work.exists():
                log.warning("could not delete %s (resume state of a completed run); it can be deleted", self.work)
        return summary


# Settings that change how, not what, a run trains: resuming with other values is expected (e.g. more GPUs).
ENGINE_KEYS = frozenset(
    {
        "device",
        "precision",
        "channels_last",
        "gpus",
        "num_workers",
        "checkpoint_every_steps",
        "log_every_steps",
        "keep_work",
    }
)


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two run configurations (tracking and engine keys aside)."""
    from ris.training.tracking import flatten

    a, b = (
        flatten({k: v for k, v in old.items() if k != "tracking"}),
        flatten({k: v for k, v in new.items() if k != "tracking"}),
    )
    return sorted(
        k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (k.startswith("train.") and k[6:] in ENGINE_KEYS)
    )


def _epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items() if k != "epoch"}

