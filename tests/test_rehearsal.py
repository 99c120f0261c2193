"""The rehearsal (`snakemake --config scale=paper rehearsal=true`; docs/scales.md): the paper DAG's jobs on a slice.

Its job list is the paper dry run's, a bug planted in the paper preset fails it (and not the demo), a run of it
trains a paper-size model with the preset's options and records that its weights were random, offline.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ris.config import load_yaml, rehearsing, run_config, table_runs, validate
from ris.rehearsal import rehearsal_overlay
from ris.training.offline import hub_parts, packaged_vocabulary, resolve_hub_weights
from tests.helpers import REPO, copy_workflow, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
REHEARSE = ("--config", "scale=paper", "rehearsal=true")
#: The jobs a rehearsal adds to the paper DAG with `paper_data:` set: the copy it reads, the stats plan and report,
#: and its summary.
ADDED = {("rehearsal_data", ""), ("rehearsal_report", ""), ("rehearsal", "")}
#: The subset of the one-run rehearsal: one training (the cheapest backbone), its evaluation, one table.
ONE_RUN_TABLE = "backbone_darknet53"
JOB = re.compile(r"^(?:local)?rule (\w+):$")


def jobs(dry_run: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a `snakemake -n` output lists."""
    out, rule = set(), None
    for line in dry_run.splitlines():
        if m := JOB.match(line.strip()):
            if rule:
                out.add((rule, ""))
            rule = m.group(1)
        elif rule and line.strip().startswith("wildcards:"):
            out.add((rule, line.strip().removeprefix("wildcards:").strip()))
            rule = None
        elif rule and not line.strip():
            out.add((rule, ""))
            rule = None
    if rule:
        out.add((rule, ""))
    return out


def workdir(tmp_path: Path, change=None) -> Path:
    """A copy of the workflow with the shipped config.yaml, changed by ``change(cfg)`` when given."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    work = copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    if change:
        change(cfg)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return work


def own_copy(tmp_path: Path, cfg: dict) -> None:
    """`paper_data:` pointing at a user's own (empty) copy: the paper DAG then plans no download."""
    refer, images = tmp_path / "mine" / "refer", tmp_path / "mine" / "train2014"
    for d in cfg["datasets"].values():
        if d["source"] == "refer":
            (refer / d["folder"]).mkdir(parents=True, exist_ok=True)
            for name in (f"refs({d['split_by']}).p", "instances.json"):
                (refer / d["folder"] / name).write_text("")
    images.mkdir(parents=True, exist_ok=True)
    cfg["paper_data"] = {"refer_root": str(refer), "coco_images": str(images)}


def test_rehearsal_runs_the_paper_dry_runs_jobs(tmp_path):
    """Same rules and run names as the paper DAG: with `paper_data:` set (the rehearsal reads its copy that way)
    it adds exactly rehearsal_data, rehearsal_report and rehearsal; the paper DAG without `paper_data:` has the 4
    downloads instead."""
    rehearsal = snakemake(workdir(tmp_path / "r"), "-n", *REHEARSE)
    assert rehearsal.returncode == 0, rehearsal.stdout + rehearsal.stderr
    paper_own = snakemake(workdir(tmp_path / "p", lambda c: own_copy(tmp_path, c)), "-n", "--config", "scale=paper")
    assert paper_own.returncode == 0, paper_own.stdout + paper_own.stderr
    paper = snakemake(workdir(tmp_path / "d"), "-n", "--config", "scale=paper")
    r, p, d = jobs(rehearsal.stdout), jobs(paper_own.stdout), jobs(paper.stdout)
    assert len({j for j in p if j[0] == "train"}) == 24 and len({j for j in p if j[0] == "evaluate"}) == 24
    assert r - p == ADDED and p - r == set()
    assert {j[0] for j in d - r} == {"download"} and len(d - r) == 4 and r - d == ADDED
    assert "results/rehearsal/runs/refcoco/lavt-swin_b-n0-s0/model.pt" in rehearsal.stdout  # apart from real runs
    assert not (tmp_path / "r" / "repo" / "data").exists()


def test_rehearsal_lint_is_clean(tmp_path):
    r = snakemake(workdir(tmp_path), "--lint", *REHEARSE)
    assert r.returncode == 0 and "Lints for" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_rehearsal_runs_the_paper_preset_on_a_slice(config):
    """Every run keeps the paper preset (480 px, full models, optimizer groups, checkpointing, micro-batch auto,
    the preset's evaluate precision and batch); only rehearsal_slice changes (two steps of one image on the CPU
    under bf16, one thread, fewer loader workers)."""
    config.update(scale="paper", rehearsal="true")  # the string `--config rehearsal=true` gives
    validate(config, SCHEMA)
    assert rehearsing(config)
    over = rehearsal_overlay(config)
    paper = {**config, "rehearsal": False}
    keys = table_runs(over, "main")
    assert keys == table_runs(paper, "main")
    for key in keys:
        r, p = run_config(over, key), run_config(paper, key)
        assert r["model"] == p["model"] and r["model"]["size"] == "full" and r["model"]["image_size"] == 480
        assert r["model"]["options"]["activation_checkpointing"] is True
        assert {k: v for k, v in r["train"].items() if k not in config["rehearsal_slice"]["train"]} == {
            k: v for k, v in p["train"].items() if k not in config["rehearsal_slice"]["train"]
        }
        assert r["train"]["optimizer"] == "lavt_official" and r["train"]["micro_batch_size"] == "auto"
        assert (r["train"]["batch_size"], r["train"]["max_steps_per_epoch"], r["train"]["device"]) == (1, 2, "cpu")
        assert r["tracking"]["experiment"] == f"ris-paper-rehearsal-{key.dataset}"
        assert r["tracking"]["tags"]["rehearsal"] == "true" and r["rehearsal"]["vocabulary"] == "all-MiniLM-L6-v2"
        assert r["data"]["prepared_dir"].startswith("data/rehearsal/") and "rehearsal" not in p
    evaluate = over["scales"]["paper"]["evaluate"]
    assert evaluate == {**config["scales"]["paper"]["evaluate"], "device": "cpu", "threads": 1, "num_workers": 1}
    assert (evaluate["precision"], evaluate["batch_size"]) == ("bf16", 16)  # the paper's
    assert over["paper_data"]["refer_root"] == "data/rehearsal/user_copy/refer"


def test_rehearsal_of_a_scale_without_refer_data_is_refused(config):
    config["rehearsal"] = True
    validate(config, SCHEMA)
    with pytest.raises(ValueError, match="rehearsal: true rehearses a scale that trains on the REFER datasets"):
        rehearsal_overlay(config)


def test_offline_rehearsal_runs_get_random_weights_and_the_packaged_vocabulary(config):
    config.update(scale="paper", rehearsal=True)
    over = rehearsal_overlay(config)
    cfg = run_config(over, table_runs(over, "main")[0])
    assert hub_parts(cfg["model"]) == ["backbone", "text"]
    assert resolve_hub_weights(cfg, reachable=lambda: True) is cfg
    offline = resolve_hub_weights(cfg, reachable=lambda: False)
    assert offline["model"]["pretrained_backbone"] is False and offline["model"]["pretrained_text"] is None
    assert offline["rehearsal"]["random_weights"] == ["backbone", "text"]
    assert offline["tracking"]["tags"]["random_weights"] == "backbone,text (hub unreachable)"
    assert cfg["model"]["pretrained_backbone"] is True  # the given config is left as it was
    vocab = packaged_vocabulary(offline)
    assert len(vocab) == 30522 and vocab[:1] == ["[PAD]"] and vocab[101:103] == ["[CLS]", "[SEP]"]  # bert-base-uncased
    assert packaged_vocabulary(cfg) is None
    paper = run_config({**config, "rehearsal": False}, table_runs(over, "main")[0])
    assert resolve_hub_weights(paper, reachable=lambda: False) is paper  # a real run never falls back


def misspell_in_paper_preset(cfg: dict) -> None:
    """A typo only the paper preset has: `bacth_size` for `batch_size` (the demo preset is untouched)."""
    train = cfg["scales"]["paper"]["train"]
    train["bacth_size"] = train.pop("batch_size")


def test_a_misspelt_key_in_the_paper_preset_fails_the_rehearsal_not_the_demo(tmp_path):
    """Needs config validation of the active preset only (the demo must not fail on the paper preset's typo)."""
    work = workdir(tmp_path, misspell_in_paper_preset)
    rehearsal = snakemake(work, "-n", *REHEARSE)
    assert rehearsal.returncode != 0
    assert "scales.paper.train" in rehearsal.stdout + rehearsal.stderr
    demo = snakemake(work, "-n")
    assert demo.returncode == 0, demo.stdout + demo.stderr


def too_many_tokens(cfg: dict) -> None:
    """A bug only a run finds: 600 word slots, valid for the schema, more than BERT-base's 512 positions."""
    cfg["scales"]["paper"]["train"]["max_tokens"] = 600


#: The one-run rehearsal's target; the jobs run offline (HF_HUB_OFFLINE=1: no network, random weights).
ONE_RUN_TARGET = f"results/rehearsal/tables/{ONE_RUN_TABLE}.csv"


@pytest.mark.slow
def test_a_bug_only_a_run_finds_fails_the_rehearsal_not_the_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = workdir(tmp_path, too_many_tokens)
    assert snakemake(work, "-n", *REHEARSE).returncode == 0  # the plan is fine: only running finds it
    assert snakemake(work, "-n").returncode == 0
    r = snakemake(work, *REHEARSE, "--", ONE_RUN_TARGET, timeout=1200)
    assert r.returncode != 0
    assert "Error in rule train" in r.stdout + r.stderr
    log = next((work / "results" / "rehearsal" / "logs" / "train").rglob("*.log")).read_text()
    assert "ris train: error:" in log and "(600)" in log and "(512)" in log  # BERT-base's position table


@pytest.mark.slow
def test_one_run_rehearsal_trains_evaluates_and_tabulates(tmp_path, monkeypatch):
    """A subset of the rehearsal CI can afford: the DAG's copy, one paper-size training (CoupAlign on Darknet-53,
    the cheapest backbone) through `ris train`, its evaluation with the paper's evaluate settings, one table."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = workdir(tmp_path)
    r = snakemake(work, *REHEARSE, "--", ONE_RUN_TARGET, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = work / "results" / "rehearsal"
    run = results / "runs" / "refcoco" / "coupalign-darknet53-n100-s0"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["size"] == "full" and cfg["model"]["image_size"] == 480
    assert cfg["rehearsal"]["random_weights"] == ["backbone", "text"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and "val_oIoU" in history[0]
    log = (results / "logs" / "train" / "refcoco" / "coupalign-darknet53-n100-s0.log").read_text()
    assert "RANDOM weights for the backbone and text" in log
    metrics = json.loads((results / "eval" / "refcoco" / run.name / "val" / "metrics.json").read_text())
    assert metrics["counts"]["samples"] >= 1 and metrics["eval_size"] == 480
    table = (results / "tables" / f"{ONE_RUN_TABLE}.md").read_text()
    assert "REHEARSAL" in table and "Darknet-53" in table
    copy = load_yaml(work / "config.yaml")
    assert (work / "data" / "rehearsal" / "user_copy" / "refer" / "refcoco" / "refs(unc).p").exists()
    assert copy["paper_data"]["refer_root"] is None  # the user's setting is not touched
    shutil.rmtree(work / "data")  # ~1 GB of checkpoints and images: leave no large temp files behind
    shutil.rmtree(work / "results")


def test_summary_reports_cost_peak_memory_weights_plan_and_limits(tmp_path):
    from ris.report.rehearsal import CANNOT_CHECK, plan_counts, write_summary

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rule, name, s, rss, pss in [("train", "refcoco/lavt-swin_b-n0-s0", 90.0, 30000.0, 5000.0),
                                    ("evaluate", "refcoco/lavt-swin_b-n0-s0", 40.0, 9000.0, 2600.0)]:  # fmt: skip
        path = tmp_path / "job_costs" / rule / f"{name}.tsv"
        path.parent.mkdir(parents=True)
        path.write_text(header + f"{s}\t0:01:30\t{rss}\t1\t1\t{pss}\t0\t0\t1\t10\n")
    run = tmp_path / "runs" / "refcoco" / "lavt-swin_b-n0-s0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"rehearsal": {"random_weights": ["backbone", "text"]}}))
    plan = "Job stats:\njob  count\n---  -----\ntrain  12\nstats_table  1\ntotal  13\n"
    (tmp_path / "plan.txt").write_text(plan)
    assert plan_counts(plan) == {"train": 12, "stats_table": 1}
    text = write_summary(tmp_path, tmp_path / "plan.txt", tmp_path / "report.html", tmp_path / "rehearsal.md")
    assert (tmp_path / "rehearsal.md").read_text() == text
    assert "| train | 1 | 90.0 | 90.0 | 30000 | 5000 |" in text
    assert "Peak memory of any job: 4.88 GiB PSS (within the 12 GiB budget), 29.30 GiB RSS" in text
    assert "1 of 1 runs trained from RANDOM weights (backbone, text)" in text
    assert "- train: 12" in text and all(item in text for item in CANNOT_CHECK)
