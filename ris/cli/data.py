"""Sub-commands of the data stage (``workflow/rules/data.smk``, ``rehearsal.smk``): synthesize, fake-refer, download,
prepare, encode-text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ris.cli.common import Subparsers, json_object, set_threads


def add_synthesize(sub: Subparsers) -> None:
    s = sub.add_parser("synthesize", help="generate the synthetic referring dataset (REFER format)")
    s.add_argument("--out", required=True, help="output folder (refs(unc).p, instances.json, images/)")
    s.add_argument("--config", type=json_object, default=None, help="SyntheticConfig as JSON, e.g. '{\"seed\": 1}'")
    s.set_defaults(fn=_synthesize)


def _synthesize(a: argparse.Namespace) -> None:
    from ris.data.synthetic import SyntheticConfig, synthesize

    summary = synthesize(Path(a.out), SyntheticConfig.from_dict(a.config or {}))
    print(json.dumps(summary, indent=2))


def add_fake_refer(sub: Subparsers) -> None:
    s = sub.add_parser("fake-refer", help="the rehearsal's REFER copy of every REFER dataset (a few images each)")
    s.add_argument("--datasets", type=json_object, required=True, help="config.yaml's datasets: section as JSON")
    s.add_argument("--settings", type=json_object, default=None, help="rehearsal_slice.data as JSON")
    s.add_argument("--refer-root", required=True, help="paper_data.refer_root: refcoco/, refcoco+/, refcocog/")
    s.add_argument("--images", required=True, help="paper_data.coco_images: COCO_train2014_*.jpg")
    s.set_defaults(fn=_fake_refer)


def _fake_refer(a: argparse.Namespace) -> None:
    from ris.data.fake_refer import CopySettings, partitions_of, write_copy

    cut = CopySettings.from_dict(a.settings or {})
    print(json.dumps(write_copy(Path(a.refer_root), Path(a.images), partitions_of(a.datasets), cut), indent=2))


def add_download(sub: Subparsers) -> None:
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


def _download(a: argparse.Namespace) -> None:
    from ris.data.download import RemoteFile, fetch_and_extract

    remote = RemoteFile(a.name, tuple(a.url), a.size or None, a.sha256 or None)
    out = fetch_and_extract(remote, Path(a.download_dir), Path(a.extract_dir), timeout=a.timeout, retries=a.retries)
    print(f"{a.name}: verified and extracted into {out}")


def add_prepare(sub: Subparsers) -> None:
    s = sub.add_parser("prepare", help="REFER files -> one Parquet table per split")
    s.add_argument("--refer-dir", required=True, help="folder with refs(<split_by>).p and instances.json")
    s.add_argument("--split-by", required=True, help="unc, google, umd, ...")
    s.add_argument("--splits", nargs="+", required=True)
    s.add_argument("--images", default=None, help="image folder; every referenced image must exist there")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_prepare)


def _prepare(a: argparse.Namespace) -> None:
    from ris.data.prepare import prepare

    images = Path(a.images) if a.images else None
    print(json.dumps(prepare(Path(a.refer_dir), a.split_by, a.splits, Path(a.out), images), indent=2))


def add_encode_text(sub: Subparsers) -> None:
    s = sub.add_parser("encode-text", help="a frozen text encoder's features of every sentence of a dataset, once")
    s.add_argument("--prepared", required=True, help="folder of the prepared <split>.parquet tables")
    s.add_argument("--pretrained", required=True, help="text weights: hub id, folder, packaged name")
    s.add_argument("--max-tokens", type=int, required=True, help="as train.max_tokens: token ids must match")
    s.add_argument("--out", required=True, help="features file (torch), read by train and evaluate")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=_encode_text)


def _encode_text(a: argparse.Namespace) -> None:
    from ris.models.text import encode_dataset

    set_threads(a.threads)
    print(json.dumps(encode_dataset(Path(a.prepared), a.pretrained, a.max_tokens, Path(a.out)), indent=2))


COMMANDS = (add_synthesize, add_fake_refer, add_download, add_prepare, add_encode_text)
