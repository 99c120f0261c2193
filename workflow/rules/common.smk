# Helpers shared by the rules: the grid comes from ris.config, so it is unit-tested there.
import json

from ris.config import (
    RunKey,
    images_dir,
    prepare_inputs,
    refer_dir,
    run_config,
    table_evaluations,
    table_runs,
    tracking_uri,
)


wildcard_constraints:
    dataset=r"[^/]+",
    method=r"[a-z0-9_]+",
    backbone=r"[a-z0-9_]+",
    num_masks=r"\d+",
    seed=r"\d+",
    split=r"[A-Za-z]+",
    archive=r"[^/]+\.zip",


ENV = "../../environment.yml"  # conda environment of every rule (with --use-conda)

RUN_DIR = f"{RESULTS}/runs/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}"
EVAL_DIR = f"{RESULTS}/eval/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}/{{split}}"


def run_key(wildcards):
    return RunKey(
        wildcards.dataset, wildcards.method, wildcards.backbone, int(wildcards.num_masks), int(wildcards.seed)
    )


def dataset_splits(dataset):
    return config["datasets"][dataset]["splits"]


def table_metric_files(wildcards):
    return [f"{RESULTS}/eval/{k.path}/{s}/metrics.json" for k, s in table_evaluations(config, wildcards.table)]


def table_histories(wildcards):
    return [f"{RESULTS}/runs/{k.path}/history.jsonl" for k in dict.fromkeys(table_runs(config, wildcards.table))]
