"""The house rules of ``ris/``: stages import only downwards, no import cycle, no module over 500 lines, and
parsing the Snakefile imports none of the heavy libraries.

The stages are the DAG's, in order: data -> models -> training -> evaluation -> report; ``interop`` (other
codebases' checkpoints) sits beside evaluation, both above training. Top-level shared utilities (``utils``,
``config``, ``metrics``: the evaluation protocol, used by training's validation as well as evaluation,
``text_weights``, ``lock``, ``options`` and ``catalog``: the declared settings and what the models register)
import no stage; ``cli`` and ``__main__`` may import anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ris"

#: Rank of each stage: a module may import its own stage or a lower rank, never a higher or an equal peer.
STAGES = {"data": 1, "models": 2, "training": 3, "evaluation": 4, "interop": 4, "report": 5}
TOP = {"cli": 9, "__main__": 10}  # the command line wires every stage; `python -m ris` runs it
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage_of(module: str) -> tuple[str, int]:
    """(stage, rank) of a ``ris.*`` module: its sub-package, or a top-level module (rank 0, or 9 for cli)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ris", 0
    name = parts[1]
    if name in STAGES:
        return name, STAGES[name]
    return name, TOP.get(name, 0)


def ris_imports(path: Path) -> set[str]:
    """Every ``ris.*`` module a file imports, at module level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ris"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "ris":
                continue
            for alias in node.names:  # `from ris.models import lavt` imports the module ris.models.lavt
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): ris_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        stage, rank = stage_of(mod)
        for dep in deps:
            dep_stage, dep_rank = stage_of(dep)
            if dep_stage != stage and dep_rank >= rank and not (rank == 0 == dep_rank):
                bad.append(f"{mod} ({stage}) imports {dep} ({dep_stage})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (a package's ``__init__`` importing its own modules is not one)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep == node or node.startswith(dep + "."):  # a module importing its own package
                continue
            if state.get(dep) == 1:
                found.append(stack[stack.index(dep) :] + [dep])
            elif dep in graph and dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [mod])
    return found


def test_stages_import_only_downwards():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_rules_catch_a_violation():
    """The checks themselves bite: an upward import and a cycle are reported."""
    graph = {"ris.data.x": {"ris.models.y"}, "ris.models.y": {"ris.data.x"}}
    assert upward_imports(graph) == ["ris.data.x (data) imports ris.models.y (models)"]
    assert cycles(graph) == [["ris.data.x", "ris.models.y", "ris.data.x"]]
    assert upward_imports({"ris.evaluation.a": {"ris.interop.b"}}) != []  # peers do not import each other
    assert upward_imports({"ris.utils": {"ris.training.train"}}) != []  # shared utilities import no stage


def test_every_stage_is_a_package_and_the_top_is_small():
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
    top = {p.stem for p in PACKAGE.glob("*.py")}
    shared = {"utils", "config", "rehearsal", "metrics", "text_weights", "lock", "options", "catalog"}
    assert top <= {"__init__", "__main__", "cli"} | shared, top


def sys_path_edits(source: str) -> list[int]:
    """Lines of Python ``source`` that change ``sys.path`` (insert/append/extend, assignment, ``setattr``): a
    module found only through such an edit hides what a package should say."""

    def is_sys_path(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            first_two = [getattr(a, "id", getattr(a, "value", None)) for a in node.args[:2]]  # setattr(sys, "path")
            if is_sys_path(node.func.value) and node.func.attr in {"insert", "append", "extend"}:
                lines.append(node.lineno)
            elif node.func.attr == "setattr" and first_two == ["sys", "path"]:
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [node.lineno for t in targets if is_sys_path(t)]
    return sorted(lines)


def test_no_sys_path_edit_anywhere():
    """Packages and ``python -m`` instead of ``sys.path`` edits, in ris/, benchmarks/, tests/, scripts/ and the
    workflow (the official LAVT code that benchmarks/ reads from a checkout is registered as packages instead)."""
    skip = {".git", ".venv", "results", "data", ".snakemake"}  # top-level folders that are not the repository's code
    files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] not in skip]
    assert {ROOT / "benchmarks" / "bench_utils.py", ROOT / "ris" / "data" / "prepare.py"} <= set(files)
    found = {str(p.relative_to(ROOT)): sys_path_edits(p.read_text()) for p in files}
    for p in [ROOT / "Snakefile", *(ROOT / "workflow").rglob("*.smk")]:
        found[str(p.relative_to(ROOT))] = [
            i for i, line in enumerate(p.read_text().splitlines(), 1) if "sys.path" in line
        ]
    assert {name: lines for name, lines in found.items() if lines} == {}
    caught = "import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\nmonkeypatch.setattr(sys, 'path', [])\n"
    assert sys_path_edits(caught) == [2, 3, 4]


def test_no_module_over_500_lines():
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lines.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("scale", ["demo", "paper"])
def test_snakefile_parses_without_heavy_imports(tmp_path, scale):
    """A dry run (parse + plan) imports none of torch, matplotlib, seaborn or mlflow: planning stays fast."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--quiet", "--cores", "1",
         "--directory", str(ROOT), "--config", f"scale={scale}", f"results_dir={tmp_path}/results"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "import time:" in line]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines}
    assert "snakemake" in imported and "ris" in imported  # the listing is real
    assert imported & {"torch", "matplotlib", "seaborn", "mlflow"} == set()


def test_the_command_line_starts_without_torch():
    """`ris --help` and the light sub-commands (tables, figures, data) never pay torch's import."""
    code = "import sys, ris.cli; assert 'torch' not in sys.modules, 'ris.cli imported torch'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
