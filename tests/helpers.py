"""Helpers that several test modules import: paths, tiny models, training runs, workflow copies, fixed metrics.

The fixtures built on them are in ``tests/conftest.py`` (pytest finds them there, nothing to import). Sections:
paths, threads, tiny models (and the official LAVT outputs' comparison), training runs (``ris train`` on the
tiny synthetic set, in this process or as a subprocess), workflow copies (a tiny ``config.yaml`` beside the
Snakefile in a temporary folder), tables and figures (fixed metrics, a valid-figure check), the CLI. Heavy
libraries (torch, MLflow, ``ris`` modules that import them) are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # facts the tests read, kept in the repository (README.md there)
REFCOCOG_SAMPLE = FIXTURES / "refcocog_umd_sample"
LAVT_REFERENCE = FIXTURES / "lavt_reference"


# ------------------------------------------------------------------------------------------------- threads


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread (as ``--threads 1`` jobs): on a small shared CPU two spinning threads run slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -------------------------------------------------------------------------------------------------- models

IMAGE = 64  # tiny Swin: stage maps 16/8/4/2, window 4 (the last stage padded to it, as official Swin)
VOCAB = 50


def tiny_model(method: str, backbone: str = "swin_b", num_masks: int = 0, options: dict | None = None):
    """A tiny, randomly initialised ``RISModel`` of ``method`` (IMAGE px, a VOCAB-word vocabulary)."""
    from ris.models import ModelConfig, build_model

    cfg = ModelConfig(
        method=method,
        backbone=backbone,
        size="tiny",
        image_size=IMAGE,
        vocab_size=VOCAB,
        num_masks=num_masks,
        options=dict(options or {}),
    )
    return build_model(cfg)


def model_loss(model, outputs: dict, target):
    """``model.loss`` as training calls it: with the image's objects when the model learns them
    (``RISModel.uses_instances``): here the target itself and the bottom-right quarter, at a quarter size."""
    import torch

    from ris.models.losses import InstanceTargets

    if not model.uses_instances:
        return model.loss(outputs, target)
    b, h, w = target.shape
    other = torch.zeros_like(target)
    other[:, h // 2 :, w // 2 :] = 1
    objects = torch.stack([target, other], 1).float()
    objects = (torch.nn.functional.adaptive_avg_pool2d(objects, (h // 4, w // 4)) > 0.5).to(torch.uint8)
    return model.loss(outputs, target, InstanceTargets(objects, torch.full((b,), 2), torch.zeros(b, dtype=torch.long)))


LAVT_TOLERANCE = 1e-4  # max abs difference to the official LAVT outputs (tests/fixtures/lavt_reference)


def lavt_differences(model, ref: dict, grad: bool = False) -> dict[str, float]:
    """Max abs difference to the official LAVT outputs ``ref`` (``LAVT_REFERENCE / "io.pt"``), per stage feature
    and for the 1/4-size scores (computed with gradients when ``grad``, as in training: where activation
    checkpointing acts)."""
    import torch

    with torch.set_grad_enabled(grad):
        out = model.forward_words(ref["image"], ref["l_feats"].transpose(1, 2), ref["l_mask"].squeeze(-1))
    diffs = {
        f"stage{i + 1}": (a - b).abs().max().item() for i, (a, b) in enumerate(zip(out["features"], ref["features"]))
    }
    diffs["scores"] = (out["scores"] - ref["scores_quarter"]).abs().max().item()
    return diffs


# ------------------------------------------------------------------------------------------------ training

# Global batch 4 in micro-batches of 2: one process accumulates 2, two DDP processes run 1 each.
TRAIN = {
    "image_size": 64,
    "max_tokens": 20,
    "epochs": 2,
    "batch_size": 4,
    "micro_batch_size": 2,
    "lr": 1.0e-3,
    "weight_decay": 0.01,
    "poly_power": 0.9,
    "num_workers": 0,
    "max_steps_per_epoch": 3,
    "checkpoint_every_steps": 2,
    "log_every_steps": 1,
    "keep_work": True,  # the engine tests compare the final resume states (work/last.pt); test_lean_results not
    "device": "cpu",
    "precision": "auto",
    "channels_last": False,
}


def make_config(
    data: dict[str, Path], uri: str, experiment: str = "engine", model: dict[str, Any] | None = None, **train: Any
) -> dict[str, Any]:
    """A resolved run configuration of tiny LAVT on ``prepared_tiny``, as ``ris.config.run_config`` builds one;
    ``model``/``train`` override keys."""
    cfg = {
        "run": "synthetic/lavt-swin_b-n0-s0",
        "dataset": "synthetic",
        "seed": 0,
        "data": {"prepared_dir": str(data["prepared"]), "images_dir": str(data["images"])},
        "model": {
            "method": "lavt",
            "backbone": "swin_b",
            "text_encoder": "bert-base-uncased",
            "size": "tiny",
            "image_size": 64,
            "num_masks": 0,
            "pretrained_backbone": False,
            "pretrained_text": None,
            "options": {"dice_weight": 1.0},
        },
        "train": {**TRAIN, **train},
        "tracking": {
            "uri": uri,
            "experiment": experiment,
            "tags": {"dataset": "synthetic", "method": "lavt", "backbone": "swin_b", "num_masks": "0", "seed": "0"},
        },
    }
    cfg["model"].update(model or {})
    return cfg


def train_here(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """``ris.training.train.train`` in this process, on one thread."""
    from ris.training.train import train

    with one_thread():
        return train(cfg, out, progress=False)


def start_cli(cfg: dict[str, Any], out: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """``ris train`` in a subprocess (its own session); returns the process and its log file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / f"{out.name}.json"
    cfg_path.write_text(json.dumps(cfg))
    log = out.parent / f"{out.name}.{time.monotonic_ns()}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "ris", "train", "--run-config", str(cfg_path), "--out", str(out)]
    cmd += ["--threads", "1", "--no-progress", *extra]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the log matches ``pattern`` (fail if the process ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        if proc.poll() is not None:
            pytest.fail(f"process ended ({proc.returncode}) before {pattern!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {pattern!r}:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> int:
    """The process's exit code; killed (and the test failed) if it runs past ``timeout`` seconds."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"process did not finish:\n{log.read_text()[-3000:]}")


def history_metrics(out: Path) -> list[dict[str, float]]:
    """Per-epoch metrics of a run folder (history.jsonl) without the wall time."""
    records = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def mlflow_run(uri: str, run_id: str):
    """An MLflow client of ``uri`` and its run ``run_id``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.get_run(run_id)


# ------------------------------------------------------------------------------------------------ workflow

SMALL_TABLE = {
    "summary": {
        "caption": "LAVT on the synthetic set",
        "datasets": {"synthetic": ["val", "testA", "testB"]},
        "runs": [{"method": "lavt", "backbone": "swin_b"}],
    }
}
TINY = {
    "synthetic": {"seed": 0, "image_size": 64, "num_images": {"train": 24, "val": 6, "testA": 4, "testB": 4}},
    "train": {"image_size": 64, "epochs": 2, "batch_size": 4, "lr": 1.0e-3},
    "pretrain": {"num_images": 12, "held_out": 4, "epochs": 1, "batch_size": 4, "warmup_steps": 1},
}


def shrink_pretraining(cfg: dict) -> None:
    """The demo's backbone pretraining at test size: TINY's settings, every family's own but its seed dropped."""
    section = cfg["scales"]["demo"]["pretrain"]
    section.update(TINY["pretrain"])
    section["families"] = {name: {"seed": f["seed"]} for name, f in section["families"].items()}


def copy_workflow(tmp_path: Path) -> Path:
    """A copy of the workflow (Snakefile, workflow/, environment.yml) in ``tmp_path/repo``, without config."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(REPO / "Snakefile", work / "Snakefile")
    shutil.copytree(REPO / "workflow", work / "workflow")
    shutil.copy(REPO / "environment.yml", work / "environment.yml")
    return work


def make_workdir(tmp_path: Path, tables: dict | None = None, scale_train: dict | None = None) -> Path:
    """Copy the workflow into ``tmp_path`` with a tiny config.yaml (a fresh-clone stand-in): the shipped one
    with TINY's sizes and ``tables`` (default SMALL_TABLE) in place of its tables."""
    work = copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["synthetic"].update(TINY["synthetic"])
    cfg["scales"]["demo"]["train"].update(scale_train or TINY["train"])
    shrink_pretraining(cfg)
    cfg["tables"] = tables or SMALL_TABLE
    if (cfg.get("stats") or {}).get("table") not in cfg["tables"]:
        cfg.pop("stats", None)  # it names a table of the full config
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def snakemake(work: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 *args`` in ``work`` with this Python's tools first on the PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dry_run_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the job-stats table that ``snakemake -n`` prints (``rule  count`` lines)."""
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", output, re.M)}


# ----------------------------------------------------------------------------------------- tables, figures

METHOD_BASE = {
    "lavt": 40.0, "coupalign": 45.0, "eavl": 43.0, "jmceln": 44.0,
    "all_foreground": 6.0, "random_object": 25.0, "largest_object": 30.0,
}  # fmt: skip
BACKBONE_OFFSET = {"swin_b": 0.0, "resnet101": -3.0, "darknet53": -4.0, "-": 0.0}
SPLIT_OFFSET = {"val": 0.0, "testA": 2.0, "testB": -2.0, "test": 1.0}
METRIC_OFFSET = {
    "oIoU": 0.0, "mIoU": 1.5, "P@0.5": 10.0, "P@0.6": 5.0, "P@0.7": 0.0, "P@0.8": -8.0, "P@0.9": -20.0, "RefAcc": 30.0,
}  # fmt: skip


def fixed_value(method: str, backbone: str, num_masks: int, split: str, metric: str, seed: int) -> float:
    """A deterministic, recognisable number for one (run, split, metric, seed)."""
    base = METHOD_BASE[method] + BACKBONE_OFFSET[backbone] + num_masks / 50
    return round(base + SPLIT_OFFSET[split] + METRIC_OFFSET[metric] + 0.5 * seed, 4)


def repo_config(results: Path, seeds: list[int] | None = None) -> dict:
    """The shipped config.yaml with its results under ``results`` and the given seeds (default [0])."""
    from ris.config import load_yaml

    cfg = load_yaml(REPO / "config.yaml")
    cfg["results_dir"] = str(results)
    cfg["seeds"] = seeds or [0]
    return cfg


def write_fixture_metrics(config: dict, table: str, skip: set[tuple[str, int]] | None = None) -> list[Path]:
    """metrics.json files of every evaluation of ``table`` with :func:`fixed_value` numbers.

    ``skip``: (run name without seed, seed) pairs to leave out (missing runs).
    """
    from ris.config import table_evaluations

    files = []
    for k, split in table_evaluations(config, table):
        if skip and (k.name.rsplit("-s", 1)[0], k.seed) in skip:
            continue
        path = Path(config["results_dir"]) / "eval" / k.path / split / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        metrics = {m: fixed_value(k.method, k.backbone, k.num_masks, split, m, k.seed) for m in METRIC_OFFSET}
        record = {
            "dataset": k.dataset, "split": split, "method": k.method, "backbone": k.backbone,
            "num_masks": k.num_masks, "seed": k.seed, "metrics": metrics, "counts": {"samples": 10, "refs": 4},
        }  # fmt: skip
        path.write_text(json.dumps(record))
        files.append(path)
    baselines = config["scales"][config["scale"]].get("baselines", [])
    for dataset, split in dict.fromkeys((k.dataset, s) for k, s in table_evaluations(config, table)):
        for name in baselines:  # as ris baselines writes them
            path = Path(config["results_dir"]) / "baselines" / dataset / split / name / "metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            metrics = {m: fixed_value(name, "-", 0, split, m, 0) for m in METRIC_OFFSET}
            record = {
                "dataset": dataset, "split": split, "method": name, "backbone": "-", "num_masks": 0, "seed": 0,
                "metrics": metrics, "counts": {"samples": 10, "refs": 4},
            }  # fmt: skip
            path.write_text(json.dumps(record))
            files.append(path)
    return files


def assert_valid_figure(path: Path) -> None:
    """A readable PNG with real content (many colours, not one flat colour), or a well-formed PDF with a page."""
    path = Path(path)
    assert path.exists() and path.stat().st_size > 2_000, f"{path}: missing or tiny"
    if path.suffix == ".png":
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 200 and im.height >= 150, f"{path}: {im.size}"
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        assert arr.std() > 5.0, f"{path}: blank (pixel std {arr.std():.2f})"
        colors = np.unique(arr.reshape(-1, 3)[::7], axis=0)
        assert len(colors) > 20, f"{path}: only {len(colors)} colours"
        dark = (arr.mean(axis=2) < 128).mean()
        assert 0.002 < dark, f"{path}: nothing drawn"
    elif path.suffix == ".pdf":
        data = path.read_bytes()
        assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:], f"{path}: not a complete PDF"
        assert b"/Type /Page" in data or b"/Type/Page" in data, f"{path}: no page"
    else:
        raise AssertionError(f"{path}: unexpected figure format")


# ----------------------------------------------------------------------------------------------------- CLI


def cli_subcommands() -> list[str]:
    """The ``ris`` sub-commands, in the order of ``ris --help``."""
    from ris.cli import build_parser

    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(action.choices)
