"""Sub-commands of the report stage (``workflow/rules/report.smk``, ``stats.smk``): tables, plot,
expression-types, mask-diagnostics, job-costs, and runs (the MLflow runs as a table, for a person)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ris.cli.common import Subparsers, json_object, load_config


def _add_table_arguments(s: argparse.ArgumentParser) -> None:
    """Which table: ``--spec`` as the DAG passes it, or ``--config`` + ``--table`` by hand (tables, plot)."""
    s.add_argument("--spec", type=json_object, default=None, help="resolved table spec: JSON text or a .json file")
    s.add_argument("--config", default="config.yaml", help="config.yaml, used with --table when no --spec")
    s.add_argument("--table", default="", help="table name under `tables:` in --config")
    s.add_argument("--published", default=None, help="published results CSV (default: the packaged one)")


def _resolve_spec(a: argparse.Namespace) -> dict:
    """The resolved table spec: ``--spec``, or the one of ``--table`` in ``--config``."""
    from ris.report.spec import table_spec

    if a.spec:
        return a.spec
    if not a.table:
        raise ValueError("give --spec, or --config and --table")
    config = load_config(a.config)
    if a.table not in config["tables"]:
        raise ValueError(f"{a.config}: no table {a.table!r}; tables: {', '.join(config['tables'])}")
    return table_spec(config, a.table)


def add_tables(sub: Subparsers) -> None:
    s = sub.add_parser("tables", help="a paper table: CSV (long), Markdown, LaTeX (booktabs), HTML")
    _add_table_arguments(s)
    s.add_argument(
        "--metrics", nargs="*", default=None,
        help="metrics.json files (default: those of the table under results_dir; absent ones show as missing)",
    )  # fmt: skip
    s.add_argument("--out-dir", default="", help="write <table>.{csv,md,tex,html} here")
    for ext in ("csv", "md", "tex", "html"):
        s.add_argument(f"--out-{ext}", default="", help=f"write the {ext} table to this path")
    s.set_defaults(fn=_tables)


def _tables(a: argparse.Namespace) -> None:
    from ris.report.render import write_tables
    from ris.report.spec import expected_metric_files

    spec = _resolve_spec(a)
    metrics = a.metrics
    if metrics is None:  # look up whatever the pipeline has written so far
        metrics = expected_metric_files(load_config(a.config), spec["name"])
    outputs = {ext: Path(p) for ext in ("csv", "md", "tex", "html") if (p := getattr(a, f"out_{ext}"))}
    if not outputs and not a.out_dir:
        raise ValueError("give --out-dir or at least one of --out-csv/--out-md/--out-tex/--out-html")
    df = write_tables(
        spec, [Path(p) for p in metrics], Path(a.out_dir) if a.out_dir else None, outputs or None, a.published
    )
    missing = df[(df["numbers"] == "reproduced") & (df["status"] == "missing")]
    if len(missing):
        logging.warning("%s: %d reproduced number(s) missing (runs not evaluated yet)", spec["name"], len(missing))


def add_plot(sub: Subparsers) -> None:
    s = sub.add_parser("plot", help="a figure of a table (PNG and/or PDF, by the --out suffixes)")
    s.add_argument("kind", choices=["precision", "num_masks", "training", "qualitative"])
    _add_table_arguments(s)
    s.add_argument("--metrics", nargs="*", default=[], help="metrics.json files (precision, num_masks)")
    s.add_argument("--histories", nargs="*", default=[], help="history.jsonl per run x seed (training)")
    s.add_argument("--samples", nargs="*", default=[], help="samples.csv per run, first split (qualitative)")
    s.add_argument("--split-table", default="", help="prepared <split>.parquet (qualitative)")
    s.add_argument("--images", default="", help="image folder (qualitative)")
    s.add_argument("--k", type=int, default=4, help="samples per grid (qualitative)")
    s.add_argument("--out", nargs="+", required=True, help="output files (.png, .pdf); successes for qualitative")
    s.add_argument("--out-failures", nargs="*", default=[], help="output files of the failures grid")
    s.add_argument("--out-swap", nargs="*", default=[], help="output files of the swap-the-sentence grid")
    s.set_defaults(fn=_plot)


def _plot(a: argparse.Namespace) -> None:
    from ris.report import curves, grids

    spec = _resolve_spec(a)
    outs = [Path(p) for p in a.out]
    if a.kind == "precision":
        curves.plot_precision(spec, [Path(p) for p in a.metrics], outs, a.published)
    elif a.kind == "num_masks":
        curves.plot_num_masks(spec, [Path(p) for p in a.metrics], outs, a.published)
    elif a.kind == "training":
        curves.plot_training(spec, [Path(p) for p in a.histories], outs)
    elif a.kind == "qualitative":
        if not (a.split_table and a.images and a.out_failures):
            raise ValueError("qualitative grids need --samples, --split-table, --images and --out-failures")
        grids.plot_qualitative(
            spec, [Path(p) for p in a.samples], Path(a.split_table), Path(a.images), outs,
            [Path(p) for p in a.out_failures], k=a.k,
        )  # fmt: skip
        if a.out_swap:
            grids.plot_swap(
                spec, Path(a.samples[-1]), Path(a.split_table), Path(a.images), [Path(p) for p in a.out_swap]
            )


def add_expression_types(sub: Subparsers) -> None:
    s = sub.add_parser("expression-types", help="mIoU and RefAcc per expression type (synthetic data's specs.json)")
    s.add_argument("--specs", required=True, help="the dataset's specs.json (written by `ris synthesize`)")
    s.add_argument("--run", action="append", required=True, help="NAME=samples.csv of a run (repeat; last = splits)")
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-plot", nargs="*", default=[], help="figure paths (.png, .pdf)")
    s.add_argument("--caption", default="", help="caption of the table and title of the figure")
    s.set_defaults(fn=_expression_types)


def _expression_types(a: argparse.Namespace) -> None:
    from ris.report.breakdown import plot_expression_types, write_expression_types

    runs = []
    for item in a.run:
        name, sep, path = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"--run {item!r}: expected NAME=path/to/samples.csv")
        runs.append((name, Path(path)))
    df = write_expression_types(runs, Path(a.specs), Path(a.out_csv), Path(a.out_md), a.caption)
    if a.out_plot:
        plot_expression_types(df, [Path(p) for p in a.out_plot], a.caption)


def add_mask_diagnostics(sub: Subparsers) -> None:
    s = sub.add_parser("mask-diagnostics", help="are the N masks N hypotheses? the table of runs, or a run's figure")
    s.add_argument("what", choices=["table", "plot"])
    s.add_argument("--eval-dirs", nargs="*", default=[], help="table: evaluation folders (<split>/*.json)")
    s.add_argument("--out-csv", help="table: CSV to write")
    s.add_argument("--out-md", help="table: Markdown to write")
    s.add_argument("--diagnostics", help="plot: a run's <split>/mask_diagnostics.json")
    s.add_argument("--split-table", help="plot: the prepared <split>.parquet it was measured on")
    s.add_argument("--images", help="plot: the dataset's image folder")
    s.add_argument("--out", nargs="*", default=[], help="plot: figure files (.png, .pdf)")
    s.set_defaults(fn=_mask_diagnostics)


def _mask_diagnostics(a: argparse.Namespace) -> None:
    if a.what == "table":
        from ris.evaluation.mask_diagnostics import DIAGNOSTICS_FILE
        from ris.report.mask_diagnostics import write_diagnostics_table

        files = sorted(f for d in a.eval_dirs for f in Path(d).glob(f"*/{DIAGNOSTICS_FILE}"))
        write_diagnostics_table(files, Path(a.out_csv), Path(a.out_md))
        print(f"{len(files)} run(s) with mask hypotheses -> {a.out_csv}, {a.out_md}")
    else:
        from ris.report.mask_diagnostics import plot_hypotheses

        plot_hypotheses(Path(a.diagnostics), Path(a.split_table), Path(a.images), [Path(o) for o in a.out])


def add_job_costs(sub: Subparsers) -> None:
    s = sub.add_parser("job-costs", help="seconds and max RSS per rule, from every job's Snakemake benchmark file")
    s.add_argument("--dir", default="results/job_costs", help="the rules' `benchmark:` folder")
    s.add_argument("--out-csv", default="results/tables/job_costs.csv")
    s.add_argument("--out-md", default="results/tables/job_costs.md")
    s.set_defaults(fn=_job_costs)


def _job_costs(a: argparse.Namespace) -> None:
    from ris.report.job_costs import write_job_costs

    print(write_job_costs(Path(a.dir), Path(a.out_csv), Path(a.out_md)).to_string(index=False))


def add_rehearsal_summary(sub: Subparsers) -> None:
    s = sub.add_parser("rehearsal-summary", help="a rehearsal's costs, weights, stats plan, what it cannot check")
    s.add_argument("--results", required=True, help="the rehearsal's results folder (job_costs/, runs/)")
    s.add_argument("--stats-plan", required=True, help="the output of `snakemake -n stats`")
    s.add_argument("--report", required=True, help="the Snakemake report (named in the summary)")
    s.add_argument("--out", required=True, help="rehearsal.md")
    s.set_defaults(fn=_rehearsal_summary)


def _rehearsal_summary(a: argparse.Namespace) -> None:
    from ris.report.rehearsal import write_summary

    print(write_summary(Path(a.results), Path(a.stats_plan), Path(a.report), Path(a.out)))


def add_runs(sub: Subparsers) -> None:
    s = sub.add_parser("runs", help="list the runs of the MLflow store")
    s.add_argument("--config", default="config.yaml", help="config.yaml: its tracking URI (unless --uri)")
    s.add_argument("--uri", default="", help="MLflow tracking URI (default: from --config / MLFLOW_TRACKING_URI)")
    s.add_argument("--experiment-prefix", default="ris-", help="experiments whose name starts with this")
    s.add_argument("--metric", nargs="+", default=["oIoU", "mIoU"], help="split metrics to show")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--wide", action="store_true", help="also experiment, tables and MLflow run id")
    s.set_defaults(fn=_runs)


def _runs(a: argparse.Namespace) -> None:
    from ris.config import tracking_uri
    from ris.report.runs import format_runs, list_runs

    uri = a.uri or tracking_uri(load_config(a.config))
    df = list_runs(uri, experiment_prefix=a.experiment_prefix, metrics=tuple(a.metric))
    sys.stdout.write(format_runs(df, a.format, wide=a.wide))


COMMANDS = (
    add_tables,
    add_plot,
    add_expression_types,
    add_mask_diagnostics,
    add_job_costs,
    add_rehearsal_summary,
    add_runs,
)
