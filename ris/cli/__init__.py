"""The ``ris`` command: one sub-command per job kind of the DAG (each Snakemake rule calls one), and two for
people (``predict``, ``runs``). Each sub-command's arguments sit beside its handler, in the module of its stage.

ris/cli/data.py        (workflow/rules/data.smk, rehearsal.smk)
    ris synthesize         demo data in the REFER format
    ris fake-refer         the rehearsal's RefCOCO-shaped REFER copy of every paper dataset (rehearsal.smk)
    ris download           fetch, verify and safely extract a dataset archive
    ris prepare            REFER files -> one Parquet table per split
    ris encode-text        a frozen text encoder's features of every sentence of a dataset -> one file
ris/cli/training.py    (workflow/rules/train.smk)
    ris mlflow-init        create the tracking store once, before the training fan-out
    ris pretrain           pretrain a tiny backbone family on its own synthetic images (the demo's ImageNet)
    ris train              train one run from its resolved JSON configuration
    ris import-checkpoint  an official checkpoint (LAVT's released weights) -> a ris checkpoint
ris/cli/evaluation.py  (workflow/rules/evaluate.smk)
    ris evaluate           evaluate a checkpoint on prepared splits -> <split>/metrics.json
    ris baselines          score sentence-blind baselines (all foreground, random/largest object) on a split
    ris predict            segment what a sentence refers to in an image, with a trained checkpoint
ris/cli/report.py      (workflow/rules/report.smk, stats.smk, rehearsal.smk)
    ris tables             a paper table from metrics.json files and published numbers (CSV, Markdown, LaTeX, HTML)
    ris plot               a table's figures (precision, num_masks, training, qualitative; PNG and PDF)
    ris expression-types   mIoU and RefAcc per expression type of the synthetic sentences (demo)
    ris mask-diagnostics   are the N masks N hypotheses? the table of the runs' diagnostics, or a run's figure
    ris job-costs          seconds and max RSS per rule, from every job's Snakemake `benchmark:` file
    ris rehearsal-summary  a rehearsal's costs, weights, stats plan and what it cannot check (rehearsal.smk)
    ris runs               list the runs of the MLflow store (method, backbone, N, dataset, status, metrics)

JSON arguments (run configs, table specs) take JSON text or a .json file. Errors a user can fix (bad config,
missing file, corrupt data) print one clear line, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ris.cli import data, evaluation, report, training

#: The sub-commands in the order of the data flow (and of ``ris --help``): each adds its parser and handler.
COMMANDS = (*data.COMMANDS, *training.COMMANDS, *evaluation.COMMANDS, *report.COMMANDS)

USER_ERRORS = (FileNotFoundError, ValueError, KeyError, OSError, RuntimeError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ris", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


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
