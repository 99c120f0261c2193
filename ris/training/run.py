"""A training run: what one attempt is made of (:func:`build_run`) and what it keeps on disk to resume.

:func:`build_run` turns a checked run configuration into a :class:`Run`: the datasets, the model, AdamW with
the poly schedule, the grad scaler and a fresh :class:`TrainState`, restored (:func:`restore`) from
``work/last.pt`` when a previous attempt left one, the model wrapped for DDP. :func:`resume_state` and
:func:`best_state` say what ``last.pt`` and ``best.pt`` hold. The loop that reads and updates the run is
:mod:`ris.training.train`.

Layout of a run directory::

    config.json           resolved run configuration (also inside every checkpoint)
    work/last.pt          everything needed to resume exactly (atomic; every epoch and every K steps)
    work/best.pt          best model by validation oIoU
    work/history.jsonl    one JSON line of metrics per epoch
    work/mlflow_run.json  the MLflow run id, for an attempt killed before its first last.pt
    work/preempted.json   written when a signal stopped the run (the launcher's cue for exit status 75)
    model.pt              published copy of work/best.pt when training completes (the Snakemake output):
                          weights, run config, vocabulary (or the pretrained tokenizer's name); no optimizer
    history.jsonl         published copy of work/history.jsonl

Once ``model.pt`` and ``history.jsonl`` are published, ``work/`` is deleted (``last.pt`` alone is ~3x the
weights; ``train.keep_work: true`` keeps it). A failed, killed or preempted run never gets there, so its
``work/`` stays and the next attempt resumes from it: same step, weights, optimizer, scheduler, scaler, RNG
states, data position, micro-batch size and MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ris.data.dataset import ReferSplit
from ris.data.prepare import read_instances, read_split
from ris.data.tokenizer import build_vocab, load_tokenizer
from ris.models import ModelConfig, build_model
from ris.training import distributed as ddp
from ris.training.checkpoint import load_checkpoint, save_checkpoint
from ris.training.offline import packaged_vocabulary, resolve_hub_weights
from ris.training.optim import optimizer_and_schedule
from ris.training.preemption import StopRequest
from ris.training.sampler import plan_batches
from ris.training.tracking import Tracker, flatten
from ris.utils import seed_everything, write_json

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_KEYS", "Run", "TrainState", "WeightEMA", "best_state", "build_ema", "build_run", "config_changes",
    "ema_weights", "resolve_precision", "restore", "resume_state", "save_checkpoints",
]  # fmt: skip


@dataclass
class TrainState:
    """Where the run stands: what ``last.pt`` saves besides weights, optimizer, scheduler, scaler and RNG."""

    epochs_done: int = 0  # epochs completed
    step: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    epoch_losses: list[float] = field(default_factory=list)  # per step of the current epoch
    epoch_terms: dict[str, list[float]] = field(default_factory=dict)  # other loss terms, per step of the epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    pending: list[list[float]] = field(default_factory=list)  # [global_step, loss, lr] not yet sent to MLflow
    best: float = -1.0  # best validation oIoU so far


@dataclass
class Run:
    """One training attempt (fresh or resumed): configuration, data, model, optimizer and where it stands."""

    cfg: dict[str, Any]
    out_dir: Path
    dev: torch.device
    ctx: ddp.DistContext
    stop: StopRequest
    show_progress: bool
    precision: str
    vocab: list[str] | None
    vocab_size: int
    train_ds: ReferSplit
    val_ds: ReferSplit
    batch_size: int  # global: items per optimizer step over all processes
    micro: int  # items per forward and process (halved on out-of-memory under micro_batch_size auto)
    accum: int  # micro-batches accumulated per process and step: world_size * accum * micro = batch_size
    steps_per_epoch: int
    core: torch.nn.Module  # the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    state: TrainState = field(default_factory=TrainState)
    model: torch.nn.Module | None = None  # what the step calls: ``core``, or its DDP wrapper
    bn_stats: ddp.BatchNormStatsMerger | None = None
    tracker: Tracker | None = None  # rank 0 only
    ema: WeightEMA | None = None  # train.ema_decay: averages of the trainable weights (validation, best.pt)
    resumed: bool = False  # restored from the ``last.pt`` of a previous attempt
    mlflow_run_id: str | None = None  # the MLflow run that attempt logged into

    @property
    def tcfg(self) -> dict[str, Any]:
        return self.cfg["train"]

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @property
    def epochs(self) -> int:
        return int(self.tcfg["epochs"])

    @property
    def work(self) -> Path:
        return self.out_dir / "work"

    @property
    def last_path(self) -> Path:
        return self.work / "last.pt"

    @property
    def auto_micro(self) -> bool:
        """``train.micro_batch_size: auto``: the micro-batch halves on out-of-memory instead of failing."""
        return self.tcfg.get("micro_batch_size") == "auto"

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.core.parameters() if p.requires_grad]

    def set_micro(self, micro: int | None) -> None:
        """Use micro-batches of at most ``micro`` items (None: the most the global batch allows per process)."""
        self.micro, self.accum = plan_batches(self.batch_size, self.ctx.world_size, micro)
        if self.bn_stats is not None:
            self.bn_stats.accumulation = self.accum

    def log(self, msg: str, *args: Any) -> None:
        """Info on rank 0, debug on the others (one line per event, not per process)."""
        (log.info if self.ctx.is_main else log.debug)(msg, *args)


# ------------------------------------------------------------------------------------------------ build


def build_run(
    cfg: dict[str, Any], out_dir: Path, dev: torch.device, ctx: ddp.DistContext, stop: StopRequest, progress: bool
) -> Run:
    """Build data, model and optimizer, then write the run directory (so a setting the model refuses leaves
    none), restore ``work/last.pt`` when a previous attempt left one, and wrap the model for the processes."""
    cfg = resolve_hub_weights(cfg)  # a rehearsal where the hub is unreachable: random weights (ris.training.offline)
    tcfg, seed = cfg["train"], int(cfg["seed"])
    seed_everything(seed)
    precision = resolve_precision(tcfg.get("precision"), dev)

    prepared, images = Path(cfg["data"]["prepared_dir"]), Path(cfg["data"]["images_dir"])
    train_table, val_table = read_split(prepared / "train.parquet"), read_split(prepared / "val.parquet")
    tokenizer, vocab = build_tokenizer(cfg, train_table["sentence"].tolist())
    size, max_tokens = int(tcfg["image_size"]), int(tcfg["max_tokens"])
    train_ds = ReferSplit(train_table, images, size, tokenizer, max_tokens, train=True, seed=seed)
    val_ds = ReferSplit(val_table, images, size, tokenizer, max_tokens, train=False)

    batch_size = int(tcfg["batch_size"])
    requested = tcfg.get("micro_batch_size")
    micro, accum = plan_batches(batch_size, ctx.world_size, None if requested == "auto" else requested)
    steps_per_epoch = len(train_ds) // batch_size
    if tcfg.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(tcfg["max_steps_per_epoch"]))
    if steps_per_epoch < 1:
        raise ValueError(f"train split has {len(train_ds)} refs, fewer than one batch of {batch_size}")

    vocab_size = len(tokenizer.get_vocab())
    # cfg["model"] was checked key by key at start (check_run_config); an unknown key cannot reach here.
    core = build_model(ModelConfig(**cfg["model"], vocab_size=vocab_size))
    if ctx.enabled and dev.type == "cuda" and tcfg.get("sync_batchnorm"):
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    elif ctx.enabled and tcfg.get("sync_batchnorm"):
        log.warning("train.sync_batchnorm needs CUDA; BatchNorm statistics stay per micro-batch")
    if core.uses_instances:  # N masks trained as object hypotheses: the images' objects (ris.models.losses)
        train_ds.attach_instances(read_instances(prepared))
    core = core.to(dev)
    ids = torch.cat([train_ds.input_ids, val_ds.input_ids])
    masks = torch.cat([train_ds.attention, val_ds.attention])
    core.text.cache_sentences(ids, masks, cfg["data"].get("text_features"))  # a frozen encoder's, once
    if tcfg.get("channels_last", False):
        core = core.to(memory_format=torch.channels_last)
    optimizer, scheduler = optimizer_and_schedule(core, tcfg, steps_per_epoch)
    work = out_dir / "work"  # written once everything above was built: a model that cannot be built leaves no folder
    if ctx.is_main:
        work.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg)
        for tmp in work.glob(".*.tmp"):  # a checkpoint being written when the job was killed
            tmp.unlink(missing_ok=True)
    run = Run(
        cfg=cfg, out_dir=out_dir, dev=dev, ctx=ctx, stop=stop, show_progress=progress and ctx.is_main,
        precision=precision, vocab=vocab, vocab_size=vocab_size, train_ds=train_ds, val_ds=val_ds,
        batch_size=batch_size, micro=micro, accum=accum, steps_per_epoch=steps_per_epoch, core=core,
        optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(dev.type, enabled=precision == "fp16"),
        ema=build_ema(core, tcfg.get("ema_decay")),  # after build_optimizer: it decides what is trainable
    )  # fmt: skip
    if run.last_path.exists():
        restore(run, load_checkpoint(run.last_path))
    run.model, run.bn_stats = ddp.wrap_for_processes(run.core, ctx, dev, run.accum)  # DDP, once restored
    return run


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
    vocab = packaged_vocabulary(cfg) or build_vocab(train_sentences)  # a rehearsal without the hub: BERT's
    return load_tokenizer(None, vocab), vocab


# ---------------------------------------------------------------------------------- last.pt and best.pt

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


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two run configurations (tracking and engine keys aside)."""
    a = flatten({k: v for k, v in old.items() if k != "tracking"})
    b = flatten({k: v for k, v in new.items() if k != "tracking"})
    return sorted(
        k for k in set(a) | set(b) if a.get(k) != b.get(k) and not (k.startswith("train.") and k[6:] in ENGINE_KEYS)
    )


def restore(run: Run, ckpt: dict[str, Any]) -> None:
    """Load a ``last.pt`` into ``run`` (with the MLflow run id it names)."""
    changed = config_changes(ckpt.get("config", {}), run.cfg)
    if changed:
        log.warning("resuming with a changed configuration (%s): results may differ", ", ".join(changed))
    run.core.load_checkpoint_state(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None and ckpt.get("ema"):
        run.ema.load_state_dict(ckpt["ema"])
    elif run.ema is not None:  # EMA turned on for a resumed run: it starts from the restored weights
        run.ema = build_ema(run.core, run.ema.decay)
    set_rng_state(ckpt["rng"])
    s = run.state
    if "epochs_done" in ckpt:
        s.epochs_done, s.step = int(ckpt["epochs_done"]), int(ckpt["step"])
    else:  # an older last.pt, written at the end of epoch ``epoch``
        s.epochs_done, s.step = int(ckpt["epoch"]) + 1, 0
    s.global_step = int(ckpt.get("global_step", s.epochs_done * run.steps_per_epoch + s.step))
    s.epoch_losses = [float(x) for x in ckpt.get("epoch_losses", [])]
    s.epoch_terms = {k: [float(x) for x in v] for k, v in ckpt.get("epoch_terms", {}).items()}
    s.history = list(ckpt.get("history", []))
    s.pending = [list(x) for x in ckpt.get("pending", [])]
    s.best = float(ckpt["best_val_oIoU"])
    if run.auto_micro and ckpt.get("micro_batch_size"):  # keep the size an out-of-memory error led to
        run.set_micro(int(ckpt["micro_batch_size"]))
    run.log(
        "resuming %s at epoch %d step %d (global step %d), micro-batches of %d",
        run.cfg["run"], s.epochs_done + 1, s.step, s.global_step, run.micro,
    )  # fmt: skip
    run.resumed, run.mlflow_run_id = True, ckpt.get("mlflow_run_id")


def save_checkpoints(run: Run, new_best: tuple[int, dict[str, float]] | None = None) -> None:
    """Rank 0 writes ``work/best.pt`` for a ``new_best`` validation (epoch, metrics), then ``work/last.pt``."""
    if not run.ctx.is_main:
        return
    if new_best is not None:
        with ema_weights(run.ema, run.core):  # the weights validated: the EMA's when it is on
            save_checkpoint(run.work / "best.pt", best_state(run, *new_best))
    save_checkpoint(run.last_path, resume_state(run))


def resume_state(run: Run) -> dict[str, Any]:
    """What ``last.pt`` holds: everything :func:`restore` needs to continue exactly."""
    s = run.state
    return {
        "config": run.cfg,
        "vocab": run.vocab,
        "vocab_size": run.vocab_size,
        "epoch": s.epochs_done,
        "epochs_done": s.epochs_done,
        "step": s.step,
        "global_step": s.global_step,
        "steps_per_epoch": run.steps_per_epoch,
        "micro_batch_size": run.micro,
        "epoch_losses": list(s.epoch_losses),
        "epoch_terms": {k: list(v) for k, v in s.epoch_terms.items()},
        "history": list(s.history),
        "pending": list(s.pending),
        "model": raw_weights(run),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "best_val_oIoU": s.best,
        "world_size": run.ctx.world_size,
        "mlflow_run_id": run.tracker.run_id if run.tracker else None,
    }


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as plain values and tensors (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
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
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def raw_weights(run: Run) -> dict[str, Any]:
    """The model's own weights (not the EMA's, also while validation has the averages applied)."""
    state = run.core.checkpoint_state()
    return run.ema.raw(state) if run.ema is not None else state


def best_state(run: Run, epoch: int, val: dict[str, float]) -> dict[str, Any]:
    """What ``best.pt`` (and so ``model.pt``) holds: the model's weights (the EMA's while they are applied)."""
    return {
        "config": run.cfg,
        "vocab": run.vocab,
        "vocab_size": run.vocab_size,
        "epoch": epoch,
        "global_step": run.state.global_step,
        "model": run.core.checkpoint_state(),
        "val": val,
        "best_val_oIoU": run.state.best,
        "mlflow_run_id": run.tracker.run_id if run.tracker else None,
    }


# ------------------------------------------------------------------------- the EMA of the weights
# ``train.ema_decay`` (null = off): after every optimizer step ``ema = decay * ema + (1 - decay) * weights`` over
# the parameters the optimizer trains; frozen parameters and buffers (BatchNorm statistics) are the live model's,
# so the EMA model is the live model with its trainable parameters swapped for their averages (one copy of the
# trainable weights, no second model). Validation, ``best.pt`` and ``model.pt`` use the EMA weights; ``last.pt``
# holds the raw weights and the averages, so a resumed run continues bit-identically.


class WeightEMA:
    """Averages of a module's trainable parameters, by name; :meth:`applied` puts them in the module."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: {decay!r} is not in [0, 1) (null turns the EMA off)")
        self.decay = float(decay)
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        self._backup: dict[str, torch.Tensor] | None = None  # the raw weights while the averages are applied

    def _params(self, module: torch.nn.Module) -> Iterator[tuple[torch.nn.Parameter, torch.Tensor]]:
        params = dict(module.named_parameters())
        for name, avg in self.shadow.items():
            yield params[name], avg

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """One step of the average, after an optimizer step (never while the averages are applied)."""
        if self._backup is not None:
            raise RuntimeError("WeightEMA.update while the EMA weights are applied")
        for p, avg in self._params(module):
            avg.mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[None]:
        """The EMA weights in ``module`` for the duration; the raw ones come back after, also on an error."""
        if self._backup is not None:  # nested: already applied
            yield
            return
        with torch.no_grad():
            self._backup = {n: p.detach().clone() for n, p in module.named_parameters() if n in self.shadow}
            for p, avg in self._params(module):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                params = dict(module.named_parameters())
                for name, raw in self._backup.items():
                    params[name].copy_(raw)
            self._backup = None

    def raw(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A ``state_dict`` taken while the averages may be applied, with the raw weights (for last.pt)."""
        if self._backup is None:
            return state
        return {k: self._backup[k].clone() if k in self._backup else v for k, v in state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averages of a ``last.pt``; the trainable parameters must be the same ones."""
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError(
                f"last.pt: its EMA covers other parameters than the model trains "
                f"({len(shadow)} saved, {len(self.shadow)} trainable)"
            )
        with torch.no_grad():
            for name, avg in self.shadow.items():
                avg.copy_(shadow[name])


def build_ema(module: torch.nn.Module, decay: float | None) -> WeightEMA | None:
    """The EMA for ``train.ema_decay`` (None when it is null), started from the current weights."""
    return None if decay is None else WeightEMA(module, float(decay))


@contextlib.contextmanager
def ema_weights(ema: WeightEMA | None, module: torch.nn.Module) -> Iterator[None]:
    """``ema.applied(module)``, or nothing when the EMA is off."""
    if ema is None:
        yield
    else:
        with ema.applied(module):
            yield
