"""The README and docs/ stay true to the tree: every file, link, dotted name and command they mention exists.

Checked in README.md and docs/*.md: repository paths (``ris/``, ``workflow/``, ``benchmarks/``, ``scripts/``,
``docs/``, ``tests/``, ``.ci/`` and the top-level files; ``{a,b}`` alternatives and ``*`` globs expanded),
relative Markdown links, dotted ``ris.*`` names (a module, or a name a module defines), ``ris <sub-command>``
and ``snakemake ... <target>`` in code; anchors of links (``page.md#heading``); the fixed-name files of
``results/tables/`` where and as the rules write them. The README is a front door: at most 250 lines, linking
docs/index.md. Beside the pages, the statements of the workflow's own files: the profiles' comments name config
keys and ``workflow.*`` attributes that exist, the SLURM profile the plugin versions pyproject.toml and the lock
declare, and the Snakefile and rules import only names they use.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import tomllib

from tests.helpers import REPO, cli_subcommands

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


def anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as GitHub makes them (lower case, punctuation dropped)."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    """Relative Markdown links of ``page`` whose target file, or heading (``#anchor``), does not exist."""
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = page.parent / file if file else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
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
    unknown = sorted(set(SUBCOMMAND.findall(code)) - set(cli_subcommands()))
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
    page.write_text("## An `anchor`, here\n[a](nosuch.md) [b](https://example.org) [c](#an-anchor-here) [d](#nosuch)")
    assert broken_links(page) == ["nosuch.md", "#nosuch"]
    (tmp_path / "other.md").write_text(f"[e](page.md#an-anchor-here) [f](page.md#gone) [g]({page.name})")
    assert broken_links(tmp_path / "other.md") == ["page.md#gone"]
    code = code_of("`ris predict --image x`, and:\n```bash\nris nosuch\n```\n")
    assert SUBCOMMAND.findall(code) == ["predict", "nosuch"]
    assert SNAKEMAKE_TARGET.findall("`snakemake --cores 2 stats`") == ["stats"]


# ------------------------------------------------------------------ the workflow's files say what they do

WORKFLOW_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
PROFILES = sorted((REPO / "workflow" / "profiles").glob("*/config.yaml"))
FIXED_TABLE = re.compile(r"results/([\w/]+)/(\w+)\.(?:\{([\w,]+)\}|(\w+))")


def workflow_code() -> str:
    """The Snakefile and the rule files without their comment lines."""
    text = "\n".join(p.read_text() for p in WORKFLOW_FILES)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def fixed_table_files() -> dict[str, set[str]]:
    """Files of results/tables/ whose name is fixed (not one per table): name -> the extensions the rules write."""
    written: dict[str, set[str]] = {}
    for name, ext in re.findall(r'"\{RESULTS\}/tables/(\w+)\.(\w+)"', workflow_code()):
        written.setdefault(name, set()).add(ext)
    return written


def misplaced_table_files(text: str, written: dict[str, set[str]]) -> list[str]:
    """Paths in ``text`` that name a fixed-name results table elsewhere than results/tables/ or with an extension
    the rules do not write; and, where ``text`` lists a table's files (``{a,b}``), the ones it leaves out."""
    bad, named, listed = [], {}, set()
    for m in FIXED_TABLE.finditer(text):
        folder, name, group, one = m.groups()
        if name not in written:
            continue
        exts = set(group.split(",")) if group else {one}
        if folder != "tables" or not exts <= written[name]:
            bad.append(m.group())
        named.setdefault(name, set()).update(exts)
        listed |= {name} if group else set()
    bad += [
        f"results/tables/{name}.{ext} (not named)" for name in sorted(listed) for ext in written[name] - named[name]
    ]
    return bad


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_fixed_result_files_are_named_as_written(page):
    written = fixed_table_files()
    assert {"expression_types", "job_costs"} <= set(written)
    bad = misplaced_table_files(page.read_text(), written)
    assert not bad, f"{page.name}: not where or as the rules write them: {bad} (written: {written})"


def test_the_table_file_check_catches_a_mistake():
    written = {"expression_types": {"csv", "md", "png", "pdf"}}
    text = "`results/tables/expression_types.{csv,md}`, `results/plots/expression_types/expression_types.png`"
    assert misplaced_table_files(text, written) == [
        "results/plots/expression_types/expression_types.png",
        "results/tables/expression_types.pdf (not named)",
    ]
    both = "results/tables/expression_types.{csv,md} and results/tables/expression_types.{png,pdf}"
    assert misplaced_table_files(both, written) == []
    assert misplaced_table_files("results/tables/expression_types.md, results/tables/<table>.csv", written) == []
    assert misplaced_table_files("results/tables/expression_types.svg", written) == [
        "results/tables/expression_types.svg"
    ]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.parent.name for p in PROFILES])
def test_profiles_name_config_keys_that_exist(profile, config):
    """``scales.<scale>.a.b`` in a profile's comments is a key of every scale of config.yaml, and a
    ``workflow.<name>`` it names is one the workflow reads."""
    text = profile.read_text()
    for key in re.findall(r"scales\.<scale>\.([\w.]*\w)", text):
        for scale, preset in config["scales"].items():
            node = preset
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{profile}: scales.{scale}.{key} is not in config.yaml"
                node = node[part]
    for name in re.findall(r"\bworkflow\.(\w+)", text):
        assert re.search(rf"\bworkflow\.{name}\b", workflow_code()), f"{profile}: no rule reads workflow.{name}"


def test_slurm_profile_states_the_declared_plugin_version():
    """The SLURM profile's "plugin >= X, tested with Y" is pyproject.toml's lower bound and the lock's pin."""
    header = (REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text()
    stated = re.search(r"snakemake-executor-plugin-slurm >= ([\d.]+), tested with ([\d.]+)", header)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    declared = re.fullmatch(r"snakemake-executor-plugin-slurm>=([\d.]+)", extras["slurm"][0])
    locked = re.search(
        r"^snakemake-executor-plugin-slurm==([\d.]+)", (REPO / "requirements-lock.txt").read_text(), re.M
    )
    assert stated and declared and locked
    assert stated.group(1) == declared.group(1)
    assert locked.group(1).startswith(stated.group(2) + ".")


def test_workflow_imports_only_names_it_uses():
    """The Snakefile and the rule files share one namespace: every name one of them imports is used in one."""
    code = workflow_code()
    imports = re.findall(r"^(?:from [\w.]+ )?import (?:\(([^)]*)\)|([^\n]+))", code, flags=re.M)
    names = [n.strip().split(" as ")[-1] for group in imports for n in "".join(group).split(",") if n.strip()]
    # a use: the name, not as an attribute (x.name) nor as a keyword (name=...: a rule's named input)
    unused = [n for n in names if len(re.findall(rf"(?<![\w.]){re.escape(n)}\b(?!\s*=[^=])", code)) < 2]
    assert names and not unused, f"imported but never used: {unused}"
