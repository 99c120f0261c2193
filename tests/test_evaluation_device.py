"""Evaluation on the device the scale names: the evaluate rule's GPU, runtime and command, and the autocast switch.

Paper scale evaluates on one GPU per job with bf16 autocast and a SLURM runtime sized from the scale's
evaluation rate (``scales.<scale>.evaluate`` of config.yaml); the demo evaluates on the CPU and asks for no
GPU. The CUDA path is the CPU path with a different device and autocast on: tested here with bf16 on the CPU.
"""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch

from ris.config import (
    ConfigError,
    RunKey,
    all_runs,
    evaluate_gpus,
    evaluate_runtime_min,
    evaluate_settings,
    evaluation_splits,
)
from ris.evaluation.inference import inference_autocast, resolve_inference_precision, run_inference
from tests.helpers import REPO, copy_workflow, snakemake

PROFILE = REPO / "workflow" / "profiles" / "slurm"


def evaluate_jobs(output: str) -> list[dict[str, str]]:
    """The evaluate jobs of a dry run: their wildcards, threads, resources and shell command."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", output):
        if "rule evaluate:" not in block:
            continue
        job = {k: (re.search(rf"^\s*{k}: (.*)$", block, re.M) or [None, ""])[1] for k in ("wildcards", "resources")}
        job["resources"] = dict(kv.split("=", 1) for kv in job["resources"].split(", ") if "=" in kv)
        job["wildcards"] = dict(kv.split("=", 1) for kv in job["wildcards"].split(", "))
        threads = re.search(r"^\s*threads: (\d+)$", block, re.M)
        job["threads"] = int(threads[1]) if threads else 1  # Snakemake prints no threads line for one
        job["shell"] = re.search(r"python -m ris evaluate .*", block)[0]
        jobs.append(job)
    return jobs


def dry_run(tmp_path, config: dict, scale: str) -> list[dict[str, str]]:
    work = copy_workflow(tmp_path)
    (work / "config.yaml").write_text((REPO / "config.yaml").read_text())
    r = snakemake(work, "-n", "--profile", str(PROFILE), "--config", f"scale={scale}", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return evaluate_jobs(r.stdout + r.stderr)


def test_settings_per_scale(config):
    """Demo: CPU, fp32, no GPU; paper: CUDA, bf16, one GPU; the runtime follows the rate and its margin."""
    demo = evaluate_settings(config)
    assert (demo["device"], demo["precision"], evaluate_gpus(config)) == ("cpu", "fp32", 0)
    config["scale"] = "paper"
    paper = evaluate_settings(config)
    assert (paper["device"], paper["precision"], evaluate_gpus(config)) == ("cuda", "bf16", 1)
    for n in (1, 2, 3):
        seconds = paper["runtime_margin"] * n * paper["split_samples"] / paper["samples_per_s"]
        assert evaluate_runtime_min(config, n) == paper["setup_min"] + math.ceil(seconds / 60)
    # twice the rate: (about) half the inference time
    faster = copy.deepcopy(config)
    faster["scales"]["paper"]["evaluate"]["samples_per_s"] *= 2
    assert evaluate_runtime_min(faster, 3) - paper["setup_min"] == pytest.approx(
        (evaluate_runtime_min(config, 3) - paper["setup_min"]) / 2, abs=1
    )
    del config["scales"]["paper"]["evaluate"]["samples_per_s"]
    with pytest.raises(ConfigError, match=r"scales\.paper\.evaluate: missing samples_per_s"):
        evaluate_runtime_min(config, 1)


def test_paper_dry_run_evaluates_on_one_gpu_with_the_rate_runtime(tmp_path, config):
    """Every planned paper evaluate job asks for gpu=1, runs bf16 on CUDA and has the runtime of its splits."""
    jobs = dry_run(tmp_path, config, "paper")
    config["scale"] = "paper"
    groups = evaluation_splits(config)
    assert len(jobs) == len(set(all_runs(config)))  # the default target: the tables' runs
    for job in jobs:
        w = job["wildcards"]
        key = RunKey(w["dataset"], w["method"], w["backbone"], int(w["num_masks"]), int(w["seed"]))
        splits = groups[key]
        assert job["resources"]["gpu"] == "1", job
        assert int(job["resources"]["runtime"]) == evaluate_runtime_min(config, len(splits)), job
        assert f"--splits {' '.join(splits)} " in job["shell"]
        assert "--device cuda --precision bf16 --batch-size 16" in job["shell"], job["shell"]
        assert job["threads"] == min(2, evaluate_settings(config)["threads"])  # capped by the test's --cores 2
        assert f"--threads {job['threads']} " in job["shell"]
    # a job of 3 splits (RefCOCO val, testA, testB) gets more time than a job of 1
    runtimes = {len(groups[RunKey(*(j["wildcards"][k] for k in ("dataset", "method", "backbone")),
                                  int(j["wildcards"]["num_masks"]), int(j["wildcards"]["seed"]))]):
                int(j["resources"]["runtime"]) for j in jobs}  # fmt: skip
    assert runtimes[3] > runtimes[2] > runtimes[1]


def test_demo_dry_run_evaluates_on_the_cpu_without_a_gpu(tmp_path, config):
    jobs = dry_run(tmp_path, config, "demo")
    assert jobs
    for job in jobs:
        assert job["resources"]["gpu"] == "0", job
        assert "--device cpu --precision fp32" in job["shell"] and "--threads 1 " in job["shell"]


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_inference_precision("auto", cpu) == "fp32"
    assert resolve_inference_precision("auto", cuda) == "bf16"
    assert resolve_inference_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="'fp16' is not one of auto, fp32, bf16"):
        resolve_inference_precision("fp16", cpu)
    for precision, on in (("fp32", False), ("bf16", True)):
        with inference_autocast(cpu, precision):
            assert torch.is_autocast_enabled("cpu") == on


class _Recorder(torch.nn.Module):
    """A stand-in model: its mask is the image's first channel > 0, computed under whatever autocast is on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.bias.zero_()
        self.seen: list[tuple[bool, torch.dtype]] = []

    def predict(self, images, input_ids, attention_mask, size):
        logits = self.conv(images)
        self.seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return logits.squeeze(1) > 0


def test_bf16_inference_runs_the_same_loop_under_autocast():
    """run_inference with precision bf16 runs the model under bf16 autocast; fp32 without; same samples."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for b in range(3):
        images = torch.randn(4, 3, 8, 8, generator=g)
        ids = torch.ones(4, 5, dtype=torch.long)
        batches.append({"image": images, "target": images[:, 0] > 0.5, "input_ids": ids, "attention_mask": ids,
                        "row": torch.arange(4) + 4 * b})  # fmt: skip
    results = {}
    for precision in ("fp32", "bf16"):
        model = _Recorder()
        masks: list[str] = []
        inter, union, rows = run_inference(model, batches, torch.device("cpu"), masks_out=masks, precision=precision)
        results[precision] = (inter, union, rows, masks)
        expected = (precision == "bf16", torch.bfloat16 if precision == "bf16" else torch.float32)
        assert model.seen == [expected] * 3
    (i32, u32, r32, m32), (i16, u16, r16, m16) = results["fp32"], results["bf16"]
    assert list(r32) == list(r16) == list(range(12)) and len(m32) == len(m16) == 12
    # the same masks up to bf16 rounding of logits near the threshold
    assert abs(i32.sum() - i16.sum()) <= 0.01 * i32.sum() and abs(u32.sum() - u16.sum()) <= 0.01 * u32.sum()


def test_cli_passes_the_device_settings():
    from ris.cli import build_parser

    a = build_parser().parse_args(
        ["evaluate", "--checkpoint", "m.pt", "--prepared", "p", "--splits", "val", "--images", "i", "--out", "o",
         "--device", "cuda", "--precision", "bf16", "--workers", "3", "--threads", "4"]
    )  # fmt: skip
    assert (a.device, a.precision, a.workers, a.threads) == ("cuda", "bf16", 3, 4)


def test_gpu_check_cpu_mode(tmp_path, monkeypatch, capsys):
    """benchmarks/gpu_check.py on a CPU (tiny networks, 64 px): says so, every row measured, table and JSON."""
    from benchmarks import gpu_check

    monkeypatch.setattr(gpu_check, "run_fresh", gpu_check.measure)  # in this process: no spawn start-up
    out = tmp_path / "gpu_check.json"
    argv = ["--device", "cpu", "--size", "tiny", "--image", "64", "--eval-samples", "2", "--threads", "1"]
    assert gpu_check.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no CUDA device: CPU rows only" in printed
    assert "| check | batch | checkpointing |" in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert not result["cuda"] and not [r for r in rows if "error" in r]
    train = [(r["batch"], r["checkpointing"]) for r in rows if r["check"] == "train"]
    assert train == [(1, False), (1, True)]
    assert [r["batch"] for r in rows if r["check"] == "evaluate"] == [1, 2]
    assert all(r["seconds"] > 0 and r["per_s"] > 0 for r in rows if r["check"] in ("train", "evaluate"))
    assert all(r["peak_gib"] > 0 for r in rows if r["check"] == "train")
    (bf16,) = [r for r in rows if r["check"] == "bf16"]
    assert bf16["fp32_vs_official"] < 1e-4  # fp32 on the device reproduces the official outputs
    assert 0 < bf16["value"] < 1.0 and bf16["mask_pixels_changed"] < 0.05
