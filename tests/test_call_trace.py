"""benchmarks/call_trace.py: the static trace of the calls from ``ris/training/train.py:train`` (issue 23's
"returns to a file already left"); its counting rule on a small package, and its chains on the repository."""

from __future__ import annotations

from pathlib import Path

from benchmarks.call_trace import main, trace

ROOT = Path(__file__).resolve().parents[1]

MINI = {
    "ris/__init__.py": "",
    "ris/training/__init__.py": "",
    "ris/training/train.py": """
from ris.training import helpers as h
from ris.training.log import Logger
from ris.training.state import State


def train(state: State) -> None:
    h.first()
    state.log.write(1)
    h.first()
    h.third()
    with Logger() as lg:
        print(lg)
""",
    "ris/training/helpers.py": """
def first():
    return 1


def second():
    return first()


def third():
    return 3
""",
    "ris/training/log.py": """
from ris.training.helpers import second


class Logger:
    def __init__(self):
        self.n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write(self, x):
        second()
        self.close()

    def close(self):
        pass
""",
    "ris/training/state.py": """
from dataclasses import dataclass

from ris.training.log import Logger


@dataclass
class State:
    log: Logger
""",
}


def _mini(tmp_path: Path) -> Path:
    for name, text in MINI.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_counting_rule_on_a_small_package(tmp_path, capsys):
    """Module aliases, ``from`` imports, an annotated field's type, ``self.m()``, ``with C()``; a glance (a callee
    that stays in its file) costs nothing on the way back, every other arrival in a file already left counts."""
    root = _mini(tmp_path)
    t = trace(root, "ris.training.train:train")
    assert [(s.path.split("/")[-1], s.is_return) for s in t.walk] == [
        ("train.py", False),
        ("helpers.py", False),  # first()
        ("train.py", False),  # back from a glance
        ("log.py", False),  # state.log.write(): Logger.write through State.log's annotation
        ("helpers.py", True),  # second()
        ("log.py", False),  # back from a glance; then self.close() in the same file
        ("train.py", True),  # back from write(), which went on to helpers.py
        ("helpers.py", True),  # third(); first() again is not read twice
        ("train.py", False),
        ("log.py", True),  # Logger.__init__
        ("train.py", False),
        ("log.py", True),  # __enter__
        ("train.py", False),
        ("log.py", True),  # __exit__ after the block
        ("train.py", False),
    ]
    assert t.returns == {"ris/training/log.py": 3, "ris/training/helpers.py": 2, "ris/training/train.py": 1}
    assert "ris.training.log:Logger.close" in t.order
    assert t.chain("ris.training.train:train", "ris.training.helpers:first") == [
        "ris.training.train:train",
        "ris.training.helpers:first",
    ]
    assert t.chain("ris.training.train:train", "ris.training.log:Logger.close")[:2] == [
        "ris.training.train:train",
        "ris.training.log:Logger.write",
    ]
    # What-if: the helpers written in train.py (two returns fewer: helpers.py's, and train.py's after write())
    moved = trace(root, "ris.training.train:train", place={"ris.training.helpers": "ris/training/train.py"})
    assert sum(moved.returns.values()) == 5
    main(["--root", str(root), "--start", "ris.training.train:train", "--sequence"])
    out = capsys.readouterr().out
    assert "returns to a file already left: 6" in out and "RETURN" in out


def test_the_repository_trace_follows_the_step_to_mlflow():
    """On this repository the trace reaches the optimizer step and, from the epoch's steps, the MLflow write in
    ris/training/tracking.py (through ``run.tracker``'s annotated type): it bites if the tool stops following."""
    t = trace(ROOT)
    assert t.chain("ris.training.train:train", "ris.training.train:train_step")
    to_mlflow = t.chain("ris.training.train:train_epoch", "ris.training.tracking:Tracker.log_records")
    assert to_mlflow and any(f.startswith("ris.training.run_log:") for f in to_mlflow)
    files = {s.path for s in t.walk}
    assert {"ris/training/train.py", "ris/training/run.py", "ris/training/tracking.py"} <= files
    assert all((ROOT / f).is_file() for f in files)
    assert sum(t.returns.values()) == sum(s.is_return for s in t.walk) > 0
    # Issue 23: a reader following the loop returns to a file already left at most 35 times.
    assert sum(t.returns.values()) <= 35, t.returns.most_common()
