"""The ``ris`` command: one sub-command per stage of the data flow (each Snakemake rule calls one).

    ris synthesize   demo data in the REFER format
    ris download     fetch, verify and safely extract a dataset archive
    ris prepare      REFER files -> one Parquet table per split
    ris mlflow-init  create the tracking store once, before the training fan-out
    ris train        train one run from its resolved JSON configuration
    ris evaluate     evaluate a checkpoint on one split -> metrics.json
    ris tables       collect metrics.json files into tables (CSV, Markdown)
    ris plot         figures from the collected metrics

Errors a user can fix (bad config, missing file, corrupt data) print one clear line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch


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

    summary = prepare(
        Path(a.refer_dir), a.split_by, a.splits, Path(a.out), Path(a.images) if a.images else None
    )
    print(json.dumps(summary, indent=2))


def _mlflow_init(a: argparse.Namespace) -> None:
    from ris.engine.tracking import init_store
    from ris.utils import write_json

    init_store(a.uri)
    write_json(Path(a.marker), {"tracking_uri": a.uri})


def _train(a: argparse.Namespace) -> None:
    from ris.engine.train import train

    cfg = (
        json.loads(Path(a.run_config).read_text())
        if a.run_config.endswith(".json")
        else json.loads(a.run_config)
    )
    if a.threads:
        torch.set_num_threads(a.threads)
    summary = train(cfg, Path(a.out), device=a.device, progress=not a.no_progress)
    print(json.dumps(summary, indent=2))


def _evaluate(a: argparse.Namespace) -> None:
    from ris.engine.evaluate import evaluate_split

    if a.threads:
        torch.set_num_threads(a.threads)
    result = evaluate_split(
        Path(a.checkpoint),
        Path(a.split_table),
        Path(a.images),
        Path(a.out),
        a.split,
        batch_size=a.batch_size,
        device=a.device,
        log_mlflow=not a.no_mlflow,
    )
    print(json.dumps(result["metrics"], indent=2))


def _tables(a: argparse.Namespace) -> None:
    from ris.tables import write_summary_tables

    write_summary_tables([Path(p) for p in a.metrics], Path(a.out_csv), Path(a.out_md), a.caption)


def _plot(a: argparse.Namespace) -> None:
    from ris.plots import plot_summary

    plot_summary(Path(a.table), Path(a.out), [Path(p) for p in a.histories])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ris", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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

    s = sub.add_parser("mlflow-init", help="create the MLflow tracking store once")
    s.add_argument("--uri", required=True)
    s.add_argument("--marker", required=True, help="file written when the store is ready")
    s.set_defaults(fn=_mlflow_init)

    s = sub.add_parser("train", help="train one run")
    s.add_argument(
        "--run-config", required=True, help="resolved run configuration: JSON text or a .json file"
    )
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=_train)

    s = sub.add_parser("evaluate", help="evaluate a checkpoint on one prepared split")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--split-table", required=True, help="prepared <split>.parquet")
    s.add_argument("--split", required=True)
    s.add_argument("--images", required=True)
    s.add_argument("--out", required=True, help="folder for metrics.json and samples.csv")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--no-mlflow", action="store_true")
    s.set_defaults(fn=_evaluate)

    s = sub.add_parser("tables", help="collect metrics.json files into a results table")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-md", required=True)
    s.add_argument("--caption", default="")
    s.set_defaults(fn=_tables)

    s = sub.add_parser("plot", help="figures from a results table and training histories")
    s.add_argument("--table", required=True, help="long CSV written by `ris tables`")
    s.add_argument("--histories", nargs="*", default=[])
    s.add_argument("--out", required=True, help="PNG path")
    s.set_defaults(fn=_plot)
    return p


USER_ERRORS = (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
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
