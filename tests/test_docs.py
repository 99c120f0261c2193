"""The README and docs/ stay true to the tree: every file, link, dotted name and command they mention exists.

Checked in README.md and docs/*.md: repository paths (``ris/``, ``workflow/``, ``benchmarks/``, ``scripts/``,
``docs/``, ``tests/``, ``.ci/`` and the top-level files; ``{a,b}`` alternatives and ``*`` globs expanded),
relative Markdown links, dotted ``ris.*`` names (a module, or a name a module defines), ``ris <sub-command>``
and ``snakemake ... <target>`` in code. The README is a front door: at most 250 lines, linking docs/index.md.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

#: Files a page names that do not exist by design: the module docs/adding-a-method.md asks the reader to write.
NEW_FILES = {"ris/models/late_fusion.py"}

PATH = re.compile(
    r"(?<![\w./-])((?:ris|workflow|benchmarks|scripts|docs|tests|\.ci)/[\w./{},*-]*"
    r"|Snakefile|config\.yaml|pyproject\.toml|environment\.yml|requirements-lock\.(?:txt|in))"
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"^```[^\n]*\n(.*?)^```$|`([^`\n]+)`", flags=re.S | re.M)
DOTTED = re.compile(r"(?<![\w.])(ris(?:\.\w+)+)")
SUBCOMMAND = re.compile(r"(?:^|[\s`(])ris ([a-z][a-z-]+)")
SNAKEMAKE_TARGET = re.compile(r"snakemake\b[^\n#|&]*?--cores \S+ ([a-z_]+)\b")


def expand(path: str) -> list[str]:
    """``a/{b,c}.smk`` -> ``a/b.smk``, ``a/c.smk`` (every brace group)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    literals, groups = parts[0::2], [g.split(",") for g in parts[1::2]]
    out = []
    for choice in itertools.product(*groups):
        out.append("".join(lit + (choice[i] if i < len(choice) else "") for i, lit in enumerate(literals)))
    return out


def missing_paths(text: str, root: Path = REPO) -> list[str]:
    """Paths named in ``text`` that match nothing under ``root``."""
    bad = []
    for raw in PATH.findall(text):
        for path in expand(raw.rstrip(".,:;")):
            if path in NEW_FILES or "<" in path:
                continue
            if not (list(root.glob(path)) if "*" in path else (root / path).exists()):
                bad.append(path)
    return list(dict.fromkeys(bad))


def broken_links(page: Path) -> list[str]:
    """Relative Markdown links of ``page`` whose target file does not exist."""
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#")[0]).exists():
            bad.append(target)
    return bad


def code_of(text: str) -> str:
    """The page's code: fenced blocks and inline code spans, one per line."""
    return "\n".join(block or span for block, span in CODE.findall(text))


def defined_names(path: Path) -> set[str]:
    """Top-level names a module defines (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def unresolved_names(text: str) -> list[str]:
    """Dotted ``ris.*`` names in the page's code that are neither a module nor a name a module defines."""
    bad = []
    for dotted in DOTTED.findall(code_of(text)):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # the longest prefix that is a module or a package
            base = REPO.joinpath(*parts[:i])
            module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            if module.is_file():
                rest = parts[i:]
                if rest and rest[0] not in defined_names(module):
                    bad.append(dotted)
                break
        else:
            bad.append(dotted)
    return bad


def cli_subcommands() -> set[str]:
    tree = ast.parse((REPO / "ris" / "cli.py").read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "add_parser"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def snakemake_rules() -> set[str]:
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")])
    return set(re.findall(r"^\s*rule (\w+):", text, flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_named_file_and_link_exists(page):
    text = page.read_text()
    assert not missing_paths(text), f"{page.name} names files that do not exist: {missing_paths(text)}"
    assert not broken_links(page), f"{page.name} links to files that do not exist: {broken_links(page)}"
    assert not unresolved_names(text), f"{page.name} names unknown ris.* objects: {unresolved_names(text)}"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_command_exists(page):
    code = code_of(page.read_text())
    unknown = sorted(set(SUBCOMMAND.findall(code)) - cli_subcommands())
    assert not unknown, f"{page.name}: `ris` has no sub-command {unknown}"
    targets = sorted(set(SNAKEMAKE_TARGET.findall(code)) - snakemake_rules())
    assert not targets, f"{page.name}: no Snakemake rule {targets}"


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "](docs/index.md)" in readme
    index = (REPO / "docs" / "index.md").read_text()
    unlisted = [p.name for p in PAGES[1:] if p.name != "index.md" and f"]({p.name})" not in index]
    assert not unlisted, f"docs/index.md does not link {unlisted}"


def test_no_page_dates_itself():
    """Pages are written to stay true: no "today" or "this version"; dates only beside measurements."""
    words = re.compile(r"\b(today|this version|previous version|currently|as of now)\b", flags=re.I)
    found = {p.name: words.findall(p.read_text()) for p in PAGES}
    assert not {k: v for k, v in found.items() if v}


def test_the_checks_catch_a_mistake(tmp_path):
    text = "see `ris/nosuch.py`, `workflow/rules/{data,nosuch}.smk` and `ris.metrics.no_such_function`"
    assert missing_paths(text) == ["ris/nosuch.py", "workflow/rules/nosuch.smk"]
    assert unresolved_names(text) == ["ris.metrics.no_such_function"]
    assert unresolved_names("`ris.metrics.referring_outcomes`, `ris.interop.lavt.load_official`") == []
    page = tmp_path / "page.md"
    page.write_text("[a](nosuch.md) [b](https://example.org) [c](#anchor)")
    assert broken_links(page) == ["nosuch.md"]
    code = code_of("`ris predict --image x`, and:\n```bash\nris nosuch\n```\n")
    assert SUBCOMMAND.findall(code) == ["predict", "nosuch"]
    assert SNAKEMAKE_TARGET.findall("`snakemake --cores 2 stats`") == ["stats"]
