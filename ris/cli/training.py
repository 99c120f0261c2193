"""Sub-commands of the training stage (``workflow/rules/train.smk``): mlflow-init, pretrain, train, and
import-checkpoint (a released checkpoint in place of a trained run)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ris.cli.common import Subparsers, json_object, set_threads


def add_mlflow_init(sub: Subparsers) -> None:
    s = sub.add_parser("mlflow-init", help="create the MLflow tracking store once")
    s.add_argument("--uri", required=True)
    s.add_argument("--marker", required=True, help="file written when the store is ready")
    s.set_defaults(fn=_mlflow_init)


def _mlflow_init(a: argparse.Namespace) -> None:
    from ris.training.tracking import init_store
    from ris.utils import write_json

    init_store(a.uri)
    write_json(Path(a.marker), {"tracking_uri": a.uri})


def add_pretrain(sub: Subparsers) -> None:
    s = sub.add_parser("pretrain", help="pretrain a tiny backbone on its own synthetic images (the demo's ImageNet)")
    s.add_argument("--config", type=json_object, required=True, help="PretrainConfig, JSON text or a .json file")
    s.add_argument("--out", required=True, help="weights + header, e.g. results/pretrained/swin_b.pt")
    s.add_argument("--metrics", required=True, help="metrics JSON (held-out accuracies, loss per epoch, timings)")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=_pretrain)


def _pretrain(a: argparse.Namespace) -> None:
    from ris.training.pretrain import PretrainConfig, pretrain

    set_threads(a.threads)
    metrics = pretrain(PretrainConfig.from_dict(a.config), Path(a.out), Path(a.metrics))
    print(json.dumps({k: metrics[k] for k in ("family", "held_out", "seconds")}, indent=2))


def add_train(sub: Subparsers) -> None:
    s = sub.add_parser("train", help="train one run")
    s.add_argument("--run-config", type=json_object, required=True, help="resolved run config (JSON or .json file)")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--device", default=None, help="auto, cpu, cuda (default: train.device of the run config)")
    s.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="training processes, one per GPU (the rule passes its gpu resource); > 1 launches torchrun",
    )
    s.add_argument("--threads", type=int, default=0, help="CPU threads in all (split between processes)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=_train)


def _train(a: argparse.Namespace) -> None:
    """Train in this process, or (``--nproc`` > 1) in torchrun workers; exit 75 when preempted by a signal."""
    from ris.training.preemption import PREEMPT_EXIT_CODE, Preempted, install_early_handlers, marker_path

    install_early_handlers()  # a SIGTERM while loading still ends in a checkpoint and status 75
    from ris.training.distributed import in_torchrun, launch

    if a.nproc > 1 and not in_torchrun():
        worker = ["-v"] if a.verbose else []
        worker += ["train", "--run-config", json.dumps(a.run_config), "--out", a.out]
        worker += ["--threads", str(max(1, a.threads // a.nproc) if a.threads else 0)]
        worker += (["--device", a.device] if a.device else []) + (["--no-progress"] if a.no_progress else [])
        rc = launch(worker, a.nproc, marker_path(Path(a.out)))
        if rc == PREEMPT_EXIT_CODE:
            _exit_now(rc)
        if rc:
            raise SystemExit(rc)
        return

    from ris.training.train import train

    set_threads(a.threads)
    try:
        summary = train(a.run_config, Path(a.out), device=a.device, progress=not a.no_progress)
    except Preempted as e:
        print(f"ris train: {e}", file=sys.stderr)
        _exit_now(PREEMPT_EXIT_CODE)
    print(json.dumps(summary, indent=2))


def _exit_now(code: int) -> None:
    """Exit at once after a preemption (checkpoint fsynced, MLflow told): tearing down an interpreter with
    torch loaded takes seconds here, and the cluster's SIGKILL follows its SIGTERM closely."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_import_checkpoint(sub: Subparsers) -> None:
    s = sub.add_parser("import-checkpoint", help="an official checkpoint (e.g. LAVT's released weights) -> ris")
    s.add_argument("checkpoint", help="the official file, e.g. refcoco.pth of yz93/LAVT-RIS")
    s.add_argument("--format", required=True, choices=["lavt"], help="whose checkpoint it is")
    s.add_argument("--out", required=True, help="the ris checkpoint to write, e.g. model.pt")
    s.add_argument("--run-config", type=json_object, default=None, help="run config to record (JSON or .json file)")
    s.add_argument("--image-size", type=int, default=None, help="input size (default: the run config's, else 480)")
    s.add_argument(
        "--tokenizer", default=None,
        help="BERT tokenizer, hub id or folder (default: the run config's pretrained_text, else bert-base-uncased)",
    )  # fmt: skip
    s.set_defaults(fn=_import_checkpoint)


def _import_checkpoint(a: argparse.Namespace) -> None:
    from ris.interop.lavt import import_checkpoint

    config = import_checkpoint(Path(a.checkpoint), Path(a.out), a.run_config, a.image_size, a.tokenizer)
    print(json.dumps({"out": a.out, "run": config["run"], "model": config["model"]}, indent=2))


COMMANDS = (add_mlflow_init, add_pretrain, add_train, add_import_checkpoint)
