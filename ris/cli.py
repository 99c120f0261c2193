"""The ``ris`` command: one sub-command per stage of the data flow (each Snakemake rule calls one).

    ris synthesize   demo data in the REFER format
    ris download     fetch, verify and safely extract a dataset archive
    ris prepare      REFER files -> one Parquet table per split
    ris encode-text  a frozen text encoder's features of every sentence of a dataset -> one file
    ris mlflow-init  create the tracking store once, before the training fan-out
    ris pretrain     pretrain a tiny backbone family on its own synthetic images (the demo's ImageNet)
    ris train        train one run from its resolved JSON configuration
    ris evaluate     evaluate a checkpoint on prepared splits -> <split>/metrics.json
    ris tables       a paper table from metrics.json files and published numbers (CSV, Markdown, LaTeX, HTML)
    ris plot         a table's figures (precision, num_masks, training, qualitative; PNG and PDF)
    ris predict      segment what a sentence refers to in an image, with a trained checkpoint
    ris import-checkpoint  an official checkpoint (LAVT's released weights) -> a ris checkpoint
    ris runs         list the runs of the MLflow store (method, backbone, N, dataset, status, metrics)

Errors a user can fix (bad config, missing file, corrupt data) print one clear line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _synthesize(a: argparse.Namespace) -> None:
    from ris.data.synthetic import SyntheticConfig, synthesize

    cfg = SyntheticConfig.from_dict(json.loads(a.config) if a.config else {})
    summary = synthesize(Path(a.out), cfg)
    print(json.dumps(summary, indent=2))


def _download(a: argparse.Namespace) -> None:
    from ris.data.download import RemoteFile, fetch_and_extract

    remote = RemoteFile(a.name, tuple(a.url), a.size or None, a.sha256 or None)
    out = fetch_and_extract(remote, Path(a.download_dir), Path(a.extract_dir), timeout=a.timeout, retries=a.retries)
    print(f"{a.name}: verified and extracted into {out}")


def _prepare(a: argparse.Namespace) -> None:
    from ris.data.prepare import prepare

    summary = prepare(Path(a.refer_dir), a.split_by, a.splits, Path(a.out), Path(a.images) if a.images else None)
    print(json.dumps(summary, indent=2))


def _encode_text(a: argparse.Namespace) -> None:
    from ris.models.text import encode_dataset

    _set_threads(a.threads)
    print(json.dumps(encode_dataset(Path(a.prepared), a.pretrained, a.max_tokens, Path(a.out)), indent=2))


def _mlflow_init(a: argparse.Namespace) -> None:
    from ris.training.tracking import init_store
    from ris.utils import write_json

    init_store(a.uri)
    write_json(Path(a.marker), {"tracking_uri": a.uri})


def _train(a: argparse.Namespace) -> None:
    """Train in this process, or (``--nproc`` > 1) in torchrun workers; exit 75 when preempted by a signal."""
    from ris.training.preemption import PREEMPT_EXIT_CODE, Preempted, install_early_handlers, marker_path

    install_early_handlers()  # a SIGTERM while loading still ends in a checkpoint and status 75
    from ris.training.distributed import in_torchrun, launch

    if a.nproc > 1 and not in_torchrun():
        worker = ["-v"] if a.verbose else []
        worker += ["train", "--run-config", a.run_config, "--out", a.out]
        worker += ["--threads", str(max(1, a.threads // a.nproc) if a.threads else 0)]
        worker += (["--device", a.device] if a.device else []) + (["--no-progress"] if a.no_progress else [])
        rc = launch(worker, a.nproc, marker_path(Path(a.out)))
        if rc == PREEMPT_EXIT_CODE:
            _exit_now(rc)
        if rc:
            raise SystemExit(rc)
        return

    from ris.training.train import train

    cfg = json.loads(Path(a.run_config).read_text()) if a.run_config.endswith(".json") else json.loads(a.run_config)
    _set_threads(a.threads)
    try:
        summary = train(cfg, Path(a.out), device=a.device, progress=not a.no_progress)
    except Preempted as e:
        print(f"ris train: {e}", file=sys.stderr)
        _exit_now(PREEMPT_EXIT_CODE)
    print(json.dumps(summary, indent=2))


def _pretrain(a: argparse.Namespace) -> None:
    from ris.training.pretrain import PretrainConfig, pretrain

    _set_threads(a.threads)
    cfg = PretrainConfig.from_dict(json.loads(a.config))
    metrics = pretrain(cfg, Path(a.out), Path(a.metrics))
    print(json.dumps({k: metrics[k] for k in ("family", "held_out", "seconds")}, indent=2))


def _exit_now(code: int) -> None:
    """Exit at once after a preemption (checkpoint fsynced, MLflow told): tearing down an interpreter with
    torch loaded takes seconds here, and the cluster's SIGKILL follows its SIGTERM closely."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _set_threads(threads: int) -> None:
    """torch's intra-op threads (0: its default). torch is imported by the commands that use it only: the
    table, plot and data jobs start ~1.5 s sooner without it."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _evaluate(a: argparse.Namespace) -> None:
    from ris.evaluation.inference import evaluate_splits

    _set_threads(a.threads)
    results = evaluate_splits(
        Path(a.checkpoint),
        Path(a.prepared),
        a.splits,
        Path(a.images),
        Path(a.out),
        batch_size=a.batch_size,
        device=a.device,
        log_mlflow=not a.no_mlflow,
        precision=a.precision,
        num_workers=a.workers,
    )
    print(json.dumps({split: r["metrics"] for split, r in results.items()}, indent=2))


def _baselines(a: argparse.Namespace) -> None:
    from ris.evaluation.baselines import BASELINES, evaluate_baselines

    names = tuple(a.names) if a.names else BASELINES
    table, instances, out = Path(a.split_table), Path(a.instances), Path(a.out_dir)
    results = evaluate_baselines(table, instances, a.size, a.dataset, a.split, out, names)
    print(json.dumps({k: v["metrics"] for k, v in results.items()}, indent=2))


def _table_spec(a: argparse.Namespace) -> dict:
    """The resolved table spec: ``--spec`` (JSON text or .json file) or ``--config`` + ``--table``."""
    if a.spec:
        return json.loads(Path(a.spec).read_text()) if a.spec.endswith(".json") else json.loads(a.spec)
    return _table_spec_from_config(a)


def _load_config(a: argparse.Namespace) -> dict:
    from ris.config import load_yaml, validate

    path = Path(a.config)
    config = load_yaml(path)
    schema = Path(a.schema) if getattr(a, "schema", None) else path.parent / "workflow/schemas/config.schema.yaml"
    if schema.exists():
        validate(config, schema, source=str(path))
    for key in ("results_dir", "data_dir"):  # relative to the config file, as when Snakemake runs beside it
        if key in config and not Path(config[key]).is_absolute():
            config[key] = str(path.resolve().parent / config[key])
    return config


def _table_spec_from_config(a: argparse.Namespace) -> dict:
    from ris.report.spec import table_spec

    if not a.table:
        raise ValueError("give --spec, or --config and --table")
    config = _load_config(a)
    if a.table not in config["tables"]:
        raise ValueError(f"{a.config}: no table {a.table!r}; tables: {', '.join(config['tables'])}")
    return table_spec(config, a.table)


def _tables(a: argparse.Namespace) -> None:
    from ris.report.render import write_tables
    from ris.report.spec import expected_metric_files

    spec = _table_spec(a)
    metrics = a.metrics
    if metrics is None:  # look up whatever the pipeline has written so far
        metrics = expected_metric_files(_load_config(a), spec["name"])
    outputs = {ext: Path(p) for ext in ("csv", "md", "tex", "html") if (p := getattr(a, f"out_{ext}"))}
    if not outputs and not a.out_dir:
        raise ValueError("give --out-dir or at least one of --out-csv/--out-md/--out-tex/--out-html")
    df = write_tables(
        spec, [Path(p) for p in metrics], Path(a.out_dir) if a.out_dir else None, outputs or None, a.published
    )
    missing = df[(df["numbers"] == "reproduced") & (df["status"] == "missing")]
    if len(missing):
        logging.warning("%s: %d reproduced number(s) missing (runs not evaluated yet)", spec["name"], len(missing))


def _plot(a: argparse.Namespace) -> None:
    from ris.report import curves, grids

    spec = _table_spec(a)
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


def _benchmarks(a: argparse.Namespace) -> None:
    from ris.report.benchmarks import write_benchmark_summary

    summary = write_benchmark_summary(Path(a.dir), Path(a.out_csv), Path(a.out_md))
    print(summary.to_string(index=False))


def _predict(a: argparse.Namespace) -> None:
    from ris.evaluation.predict import predict, save_prediction

    _set_threads(a.threads)
    out_mask = Path(a.out_mask) if a.out_mask else Path(a.image).with_suffix(".mask.png")
    out_overlay = Path(a.out_overlay) if a.out_overlay else out_mask.with_name(out_mask.stem + ".overlay.png")
    pred = predict(Path(a.checkpoint), Path(a.image), a.sentence, device=a.device)
    print(json.dumps(save_prediction(pred, out_mask, out_overlay), indent=2))


def _import_checkpoint(a: argparse.Namespace) -> None:
    from ris.interop.lavt import import_checkpoint

    run_config = None
    if a.run_config:
        text = Path(a.run_config).read_text() if a.run_config.endswith(".json") else a.run_config
        run_config = json.loads(text)
    config = import_checkpoint(Path(a.checkpoint), Path(a.out), run_config, a.image_size, a.tokenizer)
    print(json.dumps({"out": a.out, "run": config["run"], "model": config["model"]}, indent=2))


def _runs(a: argparse.Namespace) -> None:
    from ris.report.runs import format_runs, list_runs

    if a.uri:
        uri = a.uri
    else:
        from ris.config import tracking_uri

        uri = tracking_uri(_load_config(a))
    df = list_runs(uri, experiment_prefix=a.experiment_prefix, metrics=tuple(a.metric))
    sys.stdout.write(format_runs(df, a.format, wide=a.wide))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ris", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synthesize", help="generate the synthetic referring dataset (REFER format)")
    s.add_argument("--out", required=True, help="output folder (refs(unc).p, instances.json, images/)")
    s.add_argument("--config", default="", help="SyntheticConfig as JSON, e.g. '{\"seed\": 1}'")
    s.set_defaults(fn=_synthesize)

    s = sub.add_parser("download", help="download (resumable, mirrors, sha256) and safely extract an archive")
    s.add_argument("--name", required=True, help="file name, e.g. refcoco.zip")
    s.add_argument("--url", action="append", required=True, help="a mirror; repeat, tried in order")
    s.add_argument("--size", type=int, default=0, help="expected size in bytes (0: unknown)")
    s.add_argument("--sha256", default="", help="expected SHA-256 (empty: unknown)")
    s.add_argument("--download-dir", required=True)
    s.add_argument("--extract-dir", required=True)
    s.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    s.add_argument("--retries", type=int, default=5)
    s.set_defaults(fn=_download)

    s = sub.add_parser("prepare", help="REFER files -> one Parquet table per split")
    s.add_argument("--refer-dir", required=True, help="folder with refs(<split_by>).p and instances.json")
    s.add_argument("--split-by", required=True, help="unc, google, umd, ...")
    s.add_argument("--splits", nargs="+", required=True)
    s.add_argument("--images", default=None, help="image folder; every referenced image must exist there")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_prepare)

    s = sub.add_parser("encode-text", help="a frozen text encoder's features of every sentence of a dataset, once")
    s.add_argument("--prepared", required=True, help="folder of the prepared <split>.parquet tables")
    s.add_argument("--pretrained", required=True, help="hub id, local folder or packaged name (all-MiniLM-L6-v2)")
    s.add_argument("--max-tokens", type=int, required=True, help="as train.max_tokens: token ids must match")
    s.add_argument("--out", required=True, help="features file (torch), read by train and evaluate")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=_encode_text)

    s = sub.add_parser("mlflow-init", help="create the MLflow tracking store once")
    s.add_argument("--uri", required=True)
    s.add_argument("--marker", required=True, help="file written when the store is ready")
    s.set_defaults(fn=_mlflow_init)

    s = sub.add_parser("train", help="train one run")
    s.add_argument("--run-config", required=True, help="resolved run configuration: JSON text or a .json file")
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

    s = sub.add_parser("pretrain", help="pretrain a tiny backbone on its own synthetic images (the demo's ImageNet)")
    s.add_argument("--config", required=True, help="PretrainConfig as JSON (ris.config.pretrain_config)")
    s.add_argument("--out", required=True, help="weights + header, e.g. results/pretrained/swin_b.pt")
    s.add_argument("--metrics", required=True, help="metrics JSON (held-out accuracies, loss per epoch, timings)")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=_pretrain)

    s = sub.add_parser("evaluate", help="evaluate a checkpoint on prepared splits")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--prepared", required=True, help="folder of the prepared <split>.parquet tables")
    s.add_argument("--splits", required=True, nargs="+", help="splits to evaluate, e.g. val testA testB")
    s.add_argument("--images", required=True)
    s.add_argument("--out", required=True, help="folder for <split>/metrics.json and <split>/samples.csv")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="cpu", help="cpu | cuda (the scale's evaluate.device in config.yaml)")
    s.add_argument("--precision", default="fp32", help="fp32 | bf16 (autocast) | auto (bf16 on CUDA, else fp32)")
    s.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (0: none)")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    s.add_argument("--no-mlflow", action="store_true")
    s.set_defaults(fn=_evaluate)

    s = sub.add_parser("baselines", help="score trivial baselines (all foreground, random/largest object) on a split")
    s.add_argument("--split-table", required=True, help="prepared <split>.parquet")
    s.add_argument("--instances", required=True, help="instances.json of the dataset (the objects of each image)")
    s.add_argument("--size", type=int, required=True, help="evaluation size (the runs' image_size)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--out-dir", required=True, help="one <baseline>/metrics.json and samples.csv per baseline")
    s.add_argument(
        "--names", nargs="+", default=None, help="baselines to score (default: all of ris.evaluation.baselines)"
    )
    s.set_defaults(fn=_baselines)

    def table_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--spec", default="", help="resolved table spec (JSON text or .json file), as the DAG passes")
        s.add_argument("--config", default="config.yaml", help="config.yaml, used with --table when no --spec")
        s.add_argument("--table", default="", help="table name under `tables:` in --config")
        s.add_argument("--published", default=None, help="published results CSV (default: the packaged one)")

    s = sub.add_parser("tables", help="a paper table: CSV (long), Markdown, LaTeX (booktabs), HTML")
    table_args(s)
    s.add_argument(
        "--metrics", nargs="*", default=None,
        help="metrics.json files (default: those of the table under results_dir; absent ones show as missing)",
    )  # fmt: skip
    s.add_argument("--out-dir", default="", help="write <table>.{csv,md,tex,html} here")
    for ext in ("csv", "md", "tex", "html"):
        s.add_argument(f"--out-{ext}", default="", help=f"write the {ext} table to this path")
    s.set_defaults(fn=_tables)

    s = sub.add_parser("plot", help="a figure of a table (PNG and/or PDF, by the --out suffixes)")
    s.add_argument("kind", choices=["precision", "num_masks", "training", "qualitative"])
    table_args(s)
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

    s = sub.add_parser("expression-types", help="mIoU and RefAcc per expression type (synthetic data's specs.json)")
    s.add_argument("--specs", required=True, help="the dataset's specs.json (written by `ris synthesize`)")
    s.add_argument("--run", action="append", required=True, help="NAME=samples.csv of a run (repeat; last = splits)")
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--out-plot", nargs="*", default=[], help="figure paths (.png, .pdf)")
    s.add_argument("--caption", default="", help="caption of the table and title of the figure")
    s.set_defaults(fn=_expression_types)

    s = sub.add_parser("benchmarks", help="seconds and max RSS per rule from Snakemake's benchmark files")
    s.add_argument("--dir", default="results/benchmarks", help="the rules' benchmark folder")
    s.add_argument("--out-csv", default="results/tables/benchmarks.csv")
    s.add_argument("--out-md", default="results/tables/benchmarks.md")
    s.set_defaults(fn=_benchmarks)

    s = sub.add_parser("predict", help="mask of what a sentence refers to in an image (mask PNG + overlay PNG)")
    s.add_argument("--checkpoint", required=True, help="a ris checkpoint, e.g. results/runs/<dataset>/<run>/model.pt")
    s.add_argument("--image", required=True, help="an image file (PNG, JPEG, ...)")
    s.add_argument("--sentence", required=True, help="the referring expression")
    s.add_argument("--out-mask", default="", help="mask PNG (default: <image>.mask.png)")
    s.add_argument("--out-overlay", default="", help="overlay PNG (default: <mask stem>.overlay.png)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=_predict)

    s = sub.add_parser("import-checkpoint", help="an official checkpoint (e.g. LAVT's released weights) -> ris")
    s.add_argument("checkpoint", help="the official file, e.g. refcoco.pth of yz93/LAVT-RIS")
    s.add_argument("--format", required=True, choices=["lavt"], help="whose checkpoint it is")
    s.add_argument("--out", required=True, help="the ris checkpoint to write, e.g. model.pt")
    s.add_argument("--run-config", default="", help="run configuration (JSON text or .json) to record, as the DAG")
    s.add_argument("--image-size", type=int, default=None, help="input size (default: the run config's, else 480)")
    s.add_argument(
        "--tokenizer", default=None,
        help="BERT tokenizer, hub id or folder (default: the run config's pretrained_text, else bert-base-uncased)",
    )  # fmt: skip
    s.set_defaults(fn=_import_checkpoint)

    s = sub.add_parser("runs", help="list the runs of the MLflow store")
    s.add_argument("--config", default="config.yaml", help="config.yaml: its tracking URI (unless --uri)")
    s.add_argument("--uri", default="", help="MLflow tracking URI (default: from --config / MLFLOW_TRACKING_URI)")
    s.add_argument("--experiment-prefix", default="ris-", help="experiments whose name starts with this")
    s.add_argument("--metric", nargs="+", default=["oIoU", "mIoU"], help="split metrics to show")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--wide", action="store_true", help="also experiment, tables and MLflow run id")
    s.set_defaults(fn=_runs)
    return p


USER_ERRORS = (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.fn(args)
    except USER_ERRORS as e:
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ris {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
