"""The ``ris`` command line: its docstring lists every sub-command under the module that defines it, every command
the DAG runs parses, and JSON arguments take text or a .json file, with one clear error line otherwise."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml

import ris.cli
from ris.cli import build_parser, main
from tests.helpers import REPO, cli_subcommands

#: Sub-commands for people, not run by any rule.
BY_HAND = {"predict", "runs"}


def names(commands) -> list[str]:
    """The sub-command names that a module's ``COMMANDS`` add."""
    sub = argparse.ArgumentParser().add_subparsers()
    for add in commands:
        add(sub)
    return list(sub.choices)


def test_the_docstring_lists_every_subcommand_under_its_module():
    sections = re.split(r"^ris/cli/(\w+)\.py\b.*$", ris.cli.__doc__, flags=re.M)
    modules, texts = sections[1::2], sections[2::2]
    listed = {module: re.findall(r"^\s+ris ([a-z-]+)\s", text, flags=re.M) for module, text in zip(modules, texts)}
    defined = {module: names(getattr(ris.cli, module).COMMANDS) for module in listed}
    assert listed == defined
    assert [n for module in listed.values() for n in module] == cli_subcommands()  # all of them, in --help order
    assert len(cli_subcommands()) == 19


def dag_commands(tmp_path, scale: str, *targets: str, configfile=None) -> list[str]:
    """The shell lines ``python -m ris ...`` of a dry run of the DAG (``snakemake -n -p``)."""
    extra = ["--configfile", str(configfile)] if configfile else []
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--cores", "1", "--directory", str(REPO), *extra,
         "--config", f"scale={scale}", f"results_dir={tmp_path}/results"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix = "Shell command: python -m ris "
    return [line.removeprefix("Shell command: ") for line in proc.stdout.splitlines() if line.startswith(prefix)]


def test_every_command_the_dag_runs_parses(tmp_path):
    """Each rule's shell line, as Snakemake fills it in, is a valid ``ris`` command line (demo: every target; paper:
    with a released checkpoint, so that import-checkpoint is planned too; the paper rehearsal)."""
    weights = tmp_path / "refcoco.pth"
    weights.write_bytes(b"")
    released = {"method": "lavt", "backbone": "swin_b", "format": "lavt", "checkpoints": {"refcoco": str(weights)}}
    extra = tmp_path / "released.yaml"
    extra.write_text(yaml.safe_dump({"released_weights": [released]}))
    lines = dag_commands(tmp_path / "demo", "demo", "all", "stats", "job_costs")
    lines += dag_commands(tmp_path / "paper", "paper", "all", configfile=extra)
    rehearsal = tmp_path / "rehearsal.yaml"
    rehearsal.write_text(yaml.safe_dump({"rehearsal": True}))
    lines += dag_commands(tmp_path / "rehearsal", "paper", "all", configfile=rehearsal)
    parser, seen = build_parser(), set()
    for line in lines:
        argv = shlex.split(line)[3:]
        argv = argv[: argv.index(">")] if ">" in argv else argv
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"the DAG runs a command that does not parse: {line[:300]}")
        seen.add(args.command)
    assert seen == set(cli_subcommands()) - BY_HAND


def test_json_arguments_take_text_or_a_file(tmp_path):
    cfg = {"seed": 1, "nested": {"a": [1, 2]}}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    for value in (json.dumps(cfg), str(tmp_path / "run.json")):
        args = build_parser().parse_args(["train", "--run-config", value, "--out", "o"])
        assert args.run_config == cfg
        assert build_parser().parse_args(["tables", "--spec", value]).spec == cfg
        assert build_parser().parse_args(["import-checkpoint", "x.pth", "--format", "lavt", "--out", "o",
                                          "--run-config", value]).run_config == cfg  # fmt: skip


@pytest.mark.parametrize(
    "value, message",
    [
        ("{bad", "argument --run-config: JSON text: not valid JSON (Expecting property name"),
        ("[1, 2]", "argument --run-config: JSON text: expected a JSON object {...}, got list"),
        ("run.yaml", "not valid JSON (Expecting value: line 1 column 1 (char 0)) (a file's name must end in .json)"),
        ("nowhere/run.json", "argument --run-config: cannot read nowhere/run.json: No such file or directory"),
    ],
)
def test_a_bad_json_argument_is_one_usage_error(value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--run-config", value, "--out", "o"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("ris train: error: argument --run-config: ")
