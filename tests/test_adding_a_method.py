"""docs/adding-a-method.md is true: its example method, read from the page, registers, trains, evaluates.

The page's Python block is executed as the module it describes (so a broken example fails here), its
registry line is compared with ``ris/models/__init__.py``; the three files the page changes (the module, the
import line, a run in config.yaml) are applied to a copy of ``ris/models/`` and the config: the torch-free
catalog read from that copy equals the runtime registry, and the config validates against the untouched
schema and expands into a run. The method then goes through ``ris.training.train.train`` and
``ris.evaluation.inference.evaluate_splits`` on the tiny synthetic set, and through the registry-wide checks
of ``tests/test_models.py`` that every registered method must pass.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import tests.test_models as model_tests  # a module, so that pytest does not collect its tests here again
from tests.helpers import REPO, make_config, one_thread, train_here

DOC = REPO / "docs" / "adding-a-method.md"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def doc_blocks(lang: str) -> list[str]:
    """The fenced code blocks of the page in language ``lang``."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


@pytest.fixture(scope="module")
def doc_method() -> Iterator[str]:
    """Execute the page's Python code as the module it describes; yields the method name it registered.

    The code registers into an empty registry (so that it also runs where a reader has added the method to the
    package); the shipped registry, plus the page's method, is restored around the tests and afterwards.
    """
    from ris.models import METHODS

    code = "\n".join(doc_blocks("python"))
    assert "@register_method(" in code, f"{DOC}: no Python block registering a method"
    module = re.search(r"^## 1\. One module: `ris/models/(\w+)\.py`", DOC.read_text(), flags=re.M)
    assert module, f"{DOC}: the section '## 1. One module: `ris/models/<name>.py`' is missing"
    shipped = dict(METHODS)
    METHODS.clear()
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": f"ris.models.{module.group(1)}"})
        added = dict(METHODS)
        assert len(added) == 1, f"{DOC}: the Python block registered {sorted(added)}, expected one method"
        METHODS.update(shipped)
        METHODS.update(added)
        yield next(iter(added))
    finally:
        METHODS.clear()
        METHODS.update(shipped)


def test_registry_line_is_the_package_import_plus_the_new_module(doc_method):
    from ris.models import METHODS
    from ris.models.registry import lookup

    init = (REPO / "ris" / "models" / "__init__.py").read_text()
    shipped = re.search(r"^from ris\.models import ([\w, ]+?)\s*#", init, flags=re.M)
    doc = [m for b in doc_blocks("text") for m in re.findall(r"^from ris\.models import ([\w, ]+?)\s*#", b, re.M)]
    assert shipped and len(doc) == 1, "the page shows one registry (import) line"
    module = re.search(r"`ris/models/(\w+)\.py`", DOC.read_text()).group(1)
    names = [n.strip() for n in doc[0].split(",")]
    assert names == sorted(names), "the import line stays sorted (ruff's isort order)"
    assert set(names) == {n.strip() for n in shipped.group(1).split(",")} | {module}
    assert doc_method in METHODS
    with pytest.raises(KeyError, match=doc_method):  # the unknown-name error lists the new method
        lookup(METHODS, "method", "no_such_method")


def models_with_the_page(tmp_path: Path) -> Path:
    """A copy of ``ris/models/`` with the page's two changes: its module and its import line."""
    models = tmp_path / "models"
    shutil.copytree(REPO / "ris" / "models", models, ignore=shutil.ignore_patterns("__pycache__"))
    module = re.search(r"`ris/models/(\w+)\.py`", DOC.read_text()).group(1)
    (models / f"{module}.py").write_text("\n".join(doc_blocks("python")))
    line = next(m for b in doc_blocks("text") for m in re.findall(r"^from ris\.models import .*$", b, re.M))
    init = (models / "__init__.py").read_text()
    (models / "__init__.py").write_text(
        re.sub(r"^from ris\.models import [\w, ]+#.*$", line, init, count=1, flags=re.M)
    )
    return models


def test_config_entry_is_valid_and_becomes_a_run(doc_method, tmp_path):
    """The page's three changes suffice: the catalog (what planning checks) finds the method and its options,
    and config.yaml with the page's run validates against the untouched schema."""
    from ris.catalog import read_catalog
    from ris.config import RunKey, all_runs, load_yaml, run_config, validate
    from ris.models.registry import catalog

    cat = read_catalog(models_with_the_page(tmp_path))
    assert cat == catalog() and doc_method in cat.methods  # the runtime registry holds the page's method
    entries = [yaml.safe_load(b) for b in doc_blocks("yaml")]
    runs = [(t, r) for e in entries for t, spec in e.get("tables", {}).items() for r in spec["runs"]]
    assert runs and all(r["method"] == doc_method for _, r in runs), runs
    config = load_yaml(REPO / "config.yaml")
    for table, run in runs:
        config["tables"][table]["runs"].append(run)
    config["methods"][doc_method] = {"options": {"fusion_heads": 2}}  # its declared options are checked
    validate(config, SCHEMA, catalog=cat)
    config["methods"][doc_method]["options"]["fusion_head"] = 2
    with pytest.raises(ValueError, match=f"methods.{doc_method}.options: unknown key 'fusion_head'"):
        validate(config, SCHEMA, catalog=cat)
    config["methods"][doc_method]["options"].pop("fusion_head")
    _, run = runs[0]
    key = RunKey("synthetic", doc_method, run["backbone"], int(run.get("num_masks", 0)), config["seeds"][0])
    assert key in all_runs(config)  # the DAG trains and evaluates it
    resolved = run_config(config, key)
    assert resolved["model"]["method"] == doc_method and resolved["tracking"]["tags"]["method"] == doc_method


def test_trains_and_evaluates(doc_method, prepared_tiny, store, tmp_path):
    from ris.evaluation.inference import evaluate_splits

    run = next(r for b in doc_blocks("yaml") for t in yaml.safe_load(b)["tables"].values() for r in t["runs"])
    demo_widths = {"dice_weight": 1.0, "lang_norm": "none", "word_dim": 16, "decoder_dim": 16}
    cfg = make_config(
        prepared_tiny, store, "adding-a-method", model={"method": doc_method, "backbone": run["backbone"]}
    )
    cfg["model"]["options"] = demo_widths
    cfg["run"] = f"synthetic/{doc_method}-{run['backbone']}-n0-s0"
    cfg["tracking"]["tags"].update(method=doc_method, backbone=run["backbone"])
    out = tmp_path / "run"
    train_here(cfg, out)
    assert (out / "model.pt").is_file() and (out / "history.jsonl").is_file()

    with one_thread():
        results = evaluate_splits(
            out / "model.pt", prepared_tiny["prepared"], ["val"], prepared_tiny["images"], tmp_path / "eval",
            batch_size=8, log_mlflow=False,
        )  # fmt: skip
    written = json.loads((tmp_path / "eval" / "val" / "metrics.json").read_text())
    assert written["method"] == doc_method and written["run"] == cfg["run"]
    assert written["metrics"] == results["val"]["metrics"]
    assert written["counts"]["samples"] > 0 and 0.0 <= written["metrics"]["mIoU"] <= 100.0
    assert (tmp_path / "eval" / "val" / "samples.csv").is_file()


def test_passes_the_registry_wide_model_tests(doc_method):
    """What tests/test_models.py runs on every registered method, run on the page's method."""
    with one_thread():
        for backbone in sorted(model_tests.BACKBONES):
            model_tests.test_forward_loss_backward((doc_method, backbone, 0, {}))
        model_tests.test_forward_loss_backward((doc_method, "swin_b", 0, copy.deepcopy(model_tests.NARROW)))
        model_tests.test_word_dim_and_decoder_dim_set_the_widths(doc_method)
        model_tests.test_overfits_one_batch(doc_method)
