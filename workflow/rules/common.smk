# Helpers shared by the rules: the grid comes from ris.config, so it is unit-tested there.
import json
import re
import shlex

from ris.config import (
    RunKey,
    evaluation_splits,
    evaluations,
    mask_figure_runs,
    frozen_text,
    images_dir,
    prepare_inputs,
    pretrain_backbones,
    pretrain_config,
    pretrained_path,
    refer_dir,
    released_checkpoint,
    run_config,
    table_evaluations,
    table_runs,
    text_features_path,
    tracking_uri,
)
from ris.rehearsal import rehearsal_mem_mb, rehearsing


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
EVAL_RUN_DIR = f"{RESULTS}/eval/{{dataset}}/{{method}}-{{backbone}}-n{{num_masks}}-s{{seed}}"  # <split>/ inside
EVAL_SPLITS = evaluation_splits(config)  # run -> the splits its evaluate job covers


def run_key(wildcards):
    return RunKey(
        wildcards.dataset, wildcards.method, wildcards.backbone, int(wildcards.num_masks), int(wildcards.seed)
    )


def dataset_splits(dataset):
    return config["datasets"][dataset]["splits"]


BASELINE_FILES = ("metrics.json", "samples.csv")


def scale_baselines():
    """Baselines scored beside the runs at this scale (`scales.<scale>.baselines`; none at paper scale)."""
    return config["scales"][config["scale"]].get("baselines", [])


def table_baseline_files(table):
    """metrics.json of every baseline on every (dataset used, split) column of a table."""
    pairs = dict.fromkeys((k.dataset, s) for k, s in table_evaluations(config, table))
    return [f"{RESULTS}/baselines/{d}/{s}/{b}/metrics.json" for d, s in pairs for b in scale_baselines()]


def eval_dirs(pairs):
    """The evaluation folders (one `evaluate` job each) holding these (run, split) results."""
    return list(dict.fromkeys(f"{RESULTS}/eval/{k.path}" for k, _ in pairs))


def quoted(paths):
    """Paths as one shell-quoted string (files inside directory outputs are passed as params)."""
    return " ".join(shlex.quote(str(p)) for p in paths)


def table_inputs(wildcards):
    """What a table's rules wait for: the evaluation folders of its runs and the baselines' metrics."""
    return eval_dirs(table_evaluations(config, wildcards.table)) + table_baseline_files(wildcards.table)


def table_metric_files(wildcards):
    """metrics.json of every (run, split) of a table, then of its baselines (shell-quoted)."""
    runs = [f"{RESULTS}/eval/{k.path}/{s}/metrics.json" for k, s in table_evaluations(config, wildcards.table)]
    return quoted(runs + table_baseline_files(wildcards.table))


def table_histories(wildcards):
    """history.jsonl of every trained run of the table (runs from released weights have none)."""
    keys = dict.fromkeys(table_runs(config, wildcards.table))
    return [f"{RESULTS}/runs/{k.path}/history.jsonl" for k in keys if released_checkpoint(config, k) is None]


def text_features(wildcards):
    """The dataset's text features file where the scale freezes its text encoder (rule text_features)."""
    return [text_features_path(config, wildcards.dataset)] if frozen_text(config) else []


def pretrained_input(wildcards):
    """The pretraining job's weights of the run's backbone where the scale pretrains its own (demo), else none."""
    return [pretrained_path(config, wildcards.backbone)] if pretrain_backbones(config) else []


def rehearsal_temp(path):
    """A rehearsal's checkpoints (random weights, ~1 GB each) are deleted once evaluated (Snakemake temp()); a real
    run's are kept."""
    return temp(path) if rehearsing(config) else path


def run_model(wildcards):
    """The checkpoint a run is evaluated with: trained (model.pt), or imported released weights (released.pt)."""
    key = run_key(wildcards)
    return f"{RESULTS}/runs/{key.path}/{'model' if released_checkpoint(config, key) is None else 'released'}.pt"


# Helpers of the report rules (workflow/rules/report.smk): tables, figures and the Snakemake report.
from ris.config import dataset_for
from ris.report.published import default_path as published_results_path
from ris.report.spec import BREAKDOWN_SPLIT, breakdown_runs, full_caption, run_labels, table_figures, table_spec

PUBLISHED_CSV = str(published_results_path())
TABLE_FORMATS = ["csv", "md", "tex", "html"]
FIGURE_FORMATS = ["png", "pdf"]


TABLE_NAME = "|".join(re.escape(t) for t in config["tables"])  # the {table} wildcard: declared tables only
JOB_COSTS = f"{RESULTS}/job_costs"  # every job's time and memory (its `benchmark:` file), <rule>/<wildcards>.tsv


def breakdown():
    """(dataset, runs) of the expression-type table: first-seed runs on synthetic data (none at paper scale)."""
    runs = breakdown_runs(config)
    if not runs:
        return None, []
    return runs[0].dataset, [k for k in runs if k.dataset == runs[0].dataset]


BREAKDOWN_DATASET, BREAKDOWN_RUNS = breakdown()
EXPRESSION_TYPES_FILES = [f"{RESULTS}/tables/expression_types.{ext}" for ext in ("csv", "md", *FIGURE_FORMATS)]
EXPRESSION_TYPES_FILES = EXPRESSION_TYPES_FILES if BREAKDOWN_RUNS else []


def breakdown_run_args():
    """`--run NAME=samples.csv` of every run of the expression-type table (shell-quoted)."""
    names = run_labels(BREAKDOWN_RUNS)
    files = [f"{RESULTS}/eval/{k.path}/{BREAKDOWN_SPLIT}/samples.csv" for k in BREAKDOWN_RUNS]
    return " ".join(f"--run {shlex.quote(f'{n}={f}')}" for n, f in zip(names, files))


def spec_json(wildcards):
    return json.dumps(table_spec(config, wildcards.table))


def table_caption(wildcards):
    return full_caption(table_spec(config, wildcards.table))


def grid_split(table):
    """(dataset used, split) of a table's qualitative grids: its first dataset's first split."""
    first, splits = next(iter(config["tables"][table]["datasets"].items()))
    return dataset_for(config, first), splits[0]


def grid_runs(table):
    """(run, grid split) of every run of the table (first seed) on its grid's dataset, in table order."""
    dataset, split = grid_split(table)
    seed = config["seeds"][0]
    return [(k, split) for k in table_runs(config, table) if k.dataset == dataset and k.seed == seed]


def table_grid_samples(wildcards):
    """samples.csv of every run of the table (first seed) on the grid split, in table order (shell-quoted)."""
    return quoted(f"{RESULTS}/eval/{k.path}/{s}/samples.csv" for k, s in grid_runs(wildcards.table))


MASK_FIGURE_RUNS = mask_figure_runs(config)  # method -> the run its mask-hypotheses figure shows


def mask_figure_split(method):
    """The split a run's evaluate job diagnoses its masks on: val where it is evaluated on val, else its first."""
    splits = EVAL_SPLITS[MASK_FIGURE_RUNS[method]]
    return "val" if "val" in splits else splits[0]


def mask_figure_file(method):
    return f"{RESULTS}/eval/{MASK_FIGURE_RUNS[method].path}/{mask_figure_split(method)}/mask_diagnostics.json"


MASK_DIAGNOSTICS_FILES = [f"{RESULTS}/tables/mask_diagnostics.{ext}" for ext in ("csv", "md")] + [
    f"{RESULTS}/plots/mask_diagnostics/{m}.{ext}" for m in MASK_FIGURE_RUNS for ext in FIGURE_FORMATS
]


def report_targets():
    """Every table and figure of every declared table, and the mask diagnostics (the inputs of `rule all`)."""
    out = []
    for t in config["tables"]:
        out += [f"{RESULTS}/tables/{t}.{ext}" for ext in TABLE_FORMATS]
        for fig in table_figures(table_spec(config, t)):
            out += [f"{RESULTS}/plots/{t}/{fig}.{ext}" for ext in FIGURE_FORMATS]
    return out + EXPRESSION_TYPES_FILES + MASK_DIAGNOSTICS_FILES
