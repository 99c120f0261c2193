"""The Snakemake DAG end to end, in a temporary copy of the repository, on a tiny configuration."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from tests.helpers import REPO, copy_workflow, dry_run_counts, make_workdir, snakemake


@pytest.mark.slow
def test_demo_dag_end_to_end(tmp_path):
    work = make_workdir(tmp_path)
    r = snakemake(work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = work / "results"

    table = pd.read_csv(results / "tables" / "summary.csv")
    assert set(table["split"]) == {"val", "testA", "testB"}
    assert set(table["metric"]) >= {"oIoU", "mIoU", "P@0.5", "P@0.9", "RefAcc"}
    md = (results / "tables" / "summary.md").read_text()
    assert "| LAVT | reproduced |" in md
    # The baselines, scored by the pipeline on the same splits, are rows of the table with numbers.
    baselines = table[table["numbers"] == "baseline"]
    assert set(baselines["method"]) == {"all_foreground", "random_object", "largest_object"}
    assert baselines["value"].notna().all() and set(baselines["split"]) == {"val", "testA", "testB"}
    assert "| a random object | baseline |" in md
    for fig in ("precision", "training", "qualitative_successes", "qualitative_failures", "qualitative_swap"):
        assert (results / "plots" / "summary" / f"{fig}.png").stat().st_size > 10_000

    metrics = json.loads((results / "eval/synthetic/lavt-swin_b-n0-s0/val/metrics.json").read_text())
    assert metrics["counts"]["samples"] > 0 and set(metrics["metrics"]) >= {"oIoU", "mIoU", "P@0.7"}
    samples = pd.read_csv(results / "eval/synthetic/lavt-swin_b-n0-s0/val/samples.csv")
    assert len(samples) == metrics["counts"]["samples"]
    history = [
        json.loads(x) for x in (results / "runs/synthetic/lavt-swin_b-n0-s0/history.jsonl").read_text().splitlines()
    ]
    assert [h["epoch"] for h in history] == [1, 2]

    # MLflow: one run per trained model, with per-epoch, final split metrics, params and artifacts.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ris-demo-synthetic")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["method"] == "lavt" and run.data.tags["tables"] == "summary"
    assert run.data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert run.data.metrics["testB/oIoU"] == pytest.approx(
        json.loads((results / "eval/synthetic/lavt-swin_b-n0-s0/testB/metrics.json").read_text())["metrics"]["oIoU"]
    )
    # the training and evaluation jobs read MiniLM's features from the one file rule text_features wrote
    for log in ("train/synthetic/lavt-swin_b-n0-s0.log", "evaluate/synthetic/lavt-swin_b-n0-s0.log"):
        assert "text features of" in (results / "logs" / log).read_text(), log
    # one evaluate job wrote and logged all three splits
    assert {f"{s}/mIoU" for s in ("val", "testA", "testB")} <= set(run.data.metrics)
    assert len(list((results / "logs/evaluate/synthetic").glob("*.log"))) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "history.jsonl", "eval"} <= artifacts

    # Nothing to do on a second run.
    again = snakemake(work, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_lint_is_clean(tmp_path):
    work = make_workdir(tmp_path)
    r = snakemake(work, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Lints for" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_invalid_config_gives_clear_error(tmp_path):
    work = make_workdir(tmp_path)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["tables"]["summary"]["runs"][0]["method"] = "nosuchmethod"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(work, "-n")
    assert r.returncode != 0
    assert "config.yaml: field tables.summary.runs.0.method: 'nosuchmethod' is not one of" in r.stdout + r.stderr


def test_paper_dry_run_lists_every_job_without_network(tmp_path):
    """`snakemake -n --config scale=paper` on the shipped config.yaml plans the downloads, and one prepare per
    dataset, one training and one evaluation job per run and one tables job per table of that config."""
    from ris.config import all_runs, load_yaml

    work = copy_workflow(tmp_path)
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    r = snakemake(work, "-n", "--config", "scale=paper")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    counts = dry_run_counts(out)
    cfg = {**load_yaml(REPO / "config.yaml"), "scale": "paper"}
    runs = set(all_runs(cfg))  # the counts follow the config: tests/test_config.py pins the shipped grid's size
    assert counts["download"] == len(cfg["downloads"])  # the annotation zips and train2014
    assert counts["prepare"] == len({k.dataset for k in runs})
    assert counts["train"] == counts["evaluate"] == len(runs)  # one evaluation job per run, covering its splits
    assert counts["tables"] == len(cfg["tables"])
    assert "baselines" not in counts  # demo-scale rows only: the paper grid is unchanged
    assert "text_features" not in counts  # paper scale fine-tunes BERT: nothing to compute once
    assert "data/refer/.refcocog.zip.extracted" in out and "data/images/.train2014.zip.extracted" in out
    assert not (work / "data").exists()  # nothing fetched or created


def test_bring_your_own_copy_skips_downloads(tmp_path):
    work = copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    refer_root, images = tmp_path / "mine" / "refer", tmp_path / "mine" / "train2014"
    for folder in ("refcoco", "refcoco+", "refcocog"):
        (refer_root / folder).mkdir(parents=True)
        for f in ("refs(unc).p", "refs(google).p", "refs(umd).p", "instances.json"):
            (refer_root / folder / f).write_text("")
    images.mkdir(parents=True)
    cfg["paper_data"] = {"refer_root": str(refer_root), "coco_images": str(images)}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = snakemake(work, "-n", "--config", "scale=paper")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rule download" not in r.stdout + r.stderr
    assert str(refer_root / "refcoco+" / "refs(unc).p") in r.stdout + r.stderr
