"""Declared options: one declaration per setting, checked wherever a setting enters, listed in docs/options.md.

A misspelt option or an out-of-range value stops ``ris train`` before it writes anything and ``snakemake -n``
at parse time, naming the field, the place and the closest valid name. The torch-free catalog (what planning
checks against) equals the runtime registry, docs/options.md equals the declarations, and every declared
default is what the models used before the declarations (tests/golden/default_models.json).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from ris.catalog import options_markdown, read_catalog
from ris.config import all_runs, run_config
from ris.options import REQUIRED, Option, OptionError, resolve
from tests.helpers import REPO, make_config, model_loss, one_thread

GOLDEN = REPO / "tests" / "golden" / "default_models.json"


@pytest.fixture
def run_cfg(config) -> dict:
    """The resolved run config of the demo's CoupAlign Swin run (what the DAG hands to ``ris train``)."""
    return run_config(config, next(k for k in all_runs(config) if (k.method, k.backbone) == ("coupalign", "swin_b")))


# ---------------------------------------------------------------------------------------------- declarations


def test_the_catalog_equals_the_runtime_registry():
    """Methods (module, class, OPTIONS), backbones (stride) and text encoders: read from the sources without
    torch, they are what importing ris.models registers."""
    from ris.models.registry import catalog

    assert read_catalog() == catalog()
    assert set(read_catalog().methods) == {"lavt", "coupalign", "eavl", "jmceln"}


def test_the_catalog_and_the_config_check_import_no_torch():
    code = (
        "import sys; from ris.catalog import read_catalog; from ris.config import load_yaml, validate\n"
        "read_catalog(); validate(load_yaml('config.yaml'), 'workflow/schemas/config.schema.yaml')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_catalog_reads_declarations_only(tmp_path):
    """OPTIONS built from anything but literals, Option(...) and ris.options' names: an error naming the class."""
    models = tmp_path / "models"
    shutil.copytree(REPO / "ris" / "models", models)
    src = (models / "eavl.py").read_text()
    (models / "eavl.py").write_text(src.replace("        *PWAM_OPTIONS,\n", "        *pwam_fusions.OPTIONS,\n", 1))
    with pytest.raises(ValueError, match=r"eavl.py: EAVL.OPTIONS must be built from literals, Option\(...\)"):
        read_catalog(models)


def test_every_method_declares_each_option_once():
    cat = read_catalog()
    for method in cat.methods:
        names = [o.name for o in cat.method_options(method)]
        assert len(names) == len(set(names)), (method, names)


def test_run_config_model_keys_are_model_config_fields():
    """The ``model:`` declaration (MODEL_SETTINGS) has ModelConfig's fields and defaults."""
    from ris.models import ModelConfig
    from ris.options import MODEL_SETTINGS

    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert [o.name for o in MODEL_SETTINGS] == list(fields)
    for o in MODEL_SETTINGS:
        f = fields[o.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert o.default == (REQUIRED if default is dataclasses.MISSING else default), o.name


def test_an_undeclared_option_read_by_a_model_is_a_programming_error():
    from ris.models import ModelConfig, build_model

    model = build_model(ModelConfig(method="lavt", size="tiny", image_size=64, vocab_size=50))
    assert model.option("fusion_heads") == 1 and model.option("dice_weight") == 0.0
    with pytest.raises(KeyError, match="'aux_weight', which it does not declare"):
        model.option("aux_weight")  # CoupAlign's, not LAVT's


def test_the_checker_merges_defaults_and_refuses_bad_values():
    declared = (
        Option("n", int, 3, "a count", ge=1),
        Option("w", float, None, "a weight", gt=0),
        Option("mode", str, "a", "a mode", choices=("a", "b")),
        Option("micro", int, None, "a size", ge=1, also=("auto",)),
        Option("flag", bool, False, "a switch"),
        Option("ws", list, None, "weights", items=float, ge=0),
    )
    assert resolve({"w": 2}, declared, "x") == {"n": 3, "w": 2, "mode": "a", "micro": None, "flag": False, "ws": None}
    assert resolve({"micro": "auto", "ws": [1, 0.5]}, declared, "x")["micro"] == "auto"
    bad = [
        ({"nn": 1}, "x: unknown key 'nn' (did you mean 'n'?)"),
        ({"zzz": 1}, "x: unknown key 'zzz' (valid: flag, micro, mode, n, w, ws)"),
        ({"n": 0}, "x.n: expected an integer >= 1, got 0"),
        ({"n": 2.0}, "x.n: expected an integer >= 1, got 2.0"),
        ({"n": True}, "x.n: expected an integer >= 1, got true"),
        ({"w": 0}, "x.w: expected a number > 0 or null, got 0"),
        ({"mode": "c"}, "x.mode: expected one of 'a', 'b', got 'c'"),
        ({"micro": "big"}, "x.micro: expected an integer >= 1, 'auto' or null, got 'big'"),
        ({"flag": 1}, "x.flag: expected true or false, got 1"),
        ({"ws": [1, -1]}, "x.ws: expected a list of numbers >= 0 or null, got [1, -1]"),
    ]
    for given, message in bad:
        with pytest.raises(OptionError) as e:
            resolve(given, declared, "x")
        assert str(e.value) == message
    with pytest.raises(OptionError, match="x: missing key 'lr'"):
        resolve({}, (Option("lr", float, REQUIRED, "learning rate", gt=0),), "x")


# ------------------------------------------------------------------------------------------------ ris train


def test_ris_train_refuses_a_misspelt_option_and_writes_nothing(run_cfg, tmp_path):
    """The command itself: exit status 2, one line naming the key, the place and the closest name."""
    run_cfg["model"]["options"]["aux_wieght"] = 0.5
    (tmp_path / "run.json").write_text(json.dumps(run_cfg))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "ris", "train", "--run-config", str(tmp_path / "run.json"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "ris train: error: run config: field model.options: unknown key 'aux_wieght' (did you mean 'aux_weight'?)"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("train", "lr", -1e-3, "field train.lr: expected a number > 0, got -0.001"),
        ("train", "epochs", 0, "field train.epochs: expected an integer >= 1, got 0"),
        ("train", "epcohs", 3, "field train: unknown key 'epcohs' (did you mean 'epochs'?)"),
        ("model", "num_masks", -1, "field model.num_masks: expected an integer >= 0, got -1"),
        ("model", "method", "coupalgin", "field model.method: unknown method 'coupalgin' (did you mean 'coupalign'?)"),
        ("train", "image_size", 100, "train.image_size: expected a multiple of 32 (the stride of backbone swin_b)"),
        ("options", "fusion_heads", 0, "field model.options.fusion_heads: expected an integer >= 1, got 0"),
        ("options", "num_queries", 8, "field model.options: 'num_queries' is an option of eavl, not of coupalign"),
        (None, "tracker", {}, "run config: unknown key 'tracker' (did you mean 'tracking'?)"),
    ],
)
def test_ris_train_refuses_values_out_of_range(run_cfg, tmp_path, capsys, section, key, value, message):
    from ris.cli import main

    target = run_cfg if section is None else run_cfg["model"]["options"] if section == "options" else run_cfg[section]
    target[key] = value
    out = tmp_path / "out"
    assert main(["train", "--run-config", json.dumps(run_cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    "model, message",
    [
        (
            {"method": "eavl", "num_masks": 4, "options": {"num_queries": 8}},
            "model.num_masks=4 and model.options.num_queries=8 disagree",
        ),
        (
            {"method": "jmceln", "options": {"num_stages": 3, "stage_weights": [1.0, 1.0]}},
            "model.options.stage_weights [1.0, 1.0]: expected 3 values (num_stages)",
        ),
    ],
)
def test_settings_only_the_model_can_check_still_write_nothing(prepared_tiny, tmp_path, capsys, model, message):
    """Two fields that agree one by one but not together are refused when the model is built: that happens
    before the run folder is written, so the user's mistake leaves nothing behind."""
    from ris.cli import main

    cfg = make_config(prepared_tiny, f"sqlite:///{tmp_path / 'mlflow.db'}", model=model)
    out = tmp_path / "out"
    with one_thread():
        assert main(["train", "--run-config", json.dumps(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ snakemake -n


def test_snakemake_dry_run_names_a_misspelt_option_in_config_yaml(config, tmp_path):
    """config.yaml with a misspelt method option: the dry run stops at parse time, naming it."""
    import yaml

    config["methods"]["coupalign"]["options"]["aux_wieght"] = 0.5
    config["results_dir"] = str(tmp_path / "results")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    expected = "config.yaml: field methods.coupalign.options: unknown key 'aux_wieght' (did you mean 'aux_weight'?)"
    assert expected in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


# ------------------------------------------------------------------------------------------------ docs


def test_docs_options_page_is_the_declarations():
    page = REPO / "docs" / "options.md"
    assert page.read_text() == options_markdown(), "docs/options.md is stale: python -m ris.catalog > docs/options.md"


def test_the_docs_check_bites(tmp_path):
    """A changed default shows in the generated page (so a stale page fails the test above)."""
    models = tmp_path / "models"
    shutil.copytree(REPO / "ris" / "models", models)
    src = (models / "coupalign.py").read_text()
    (models / "coupalign.py").write_text(src.replace('Option("wpa_heads", int, 8,', 'Option("wpa_heads", int, 4,'))
    changed = read_catalog(models)
    assert changed.methods["coupalign"].options != read_catalog().methods["coupalign"].options
    assert options_markdown(changed) != options_markdown()


# ------------------------------------------------------------------------------------------------ no change


def _fingerprint(model) -> str:
    lines = [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _batch(size: int = 64, vocab: int = 50, tokens: int = 8):
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g)
    ids = torch.randint(1, vocab, (2, tokens), generator=g)
    mask = torch.ones(2, tokens, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    target = torch.zeros(2, size, size, dtype=torch.long)
    target[0, 12:40, 16:44] = 1
    target[1, 30:60, 4:30] = 1
    return images, ids, mask, target


def default_models() -> dict:
    """Per method and backbone, with no option given: the weights' names and shapes, the logits and losses
    of one seeded forward (tiny), and the weights' names and shapes at paper size (built on the meta device)."""
    import torch

    from ris.models import BACKBONES, METHODS, ModelConfig, build_model

    out = {}
    for m in sorted(METHODS):
        for n in [0, 4] if m == "coupalign" else [0]:
            for b in sorted(BACKBONES):
                torch.manual_seed(0)
                cfg = ModelConfig(method=m, backbone=b, size="tiny", image_size=64, vocab_size=50, num_masks=n)
                model = build_model(cfg).eval()
                images, ids, mask, target = _batch()
                with torch.no_grad():
                    o = model(images, ids, mask)
                    loss = model_loss(model, o, target)
                lg = o["logits"]
                out[f"tiny-{m}-{b}-n{n}"] = {
                    "keys": _fingerprint(model),
                    "logits": [lg.mean().item(), lg.std().item(), *lg.flatten()[:4].tolist()],
                    "loss": {k: v.item() for k, v in loss.items()},
                }
        with torch.device("meta"):
            model = build_model(
                ModelConfig(method=m, size="full", image_size=480, num_masks=100 if m == "coupalign" else 0)
            )
        out[f"full-{m}-swin_b"] = {"keys": _fingerprint(model)}
    return out


def test_declared_defaults_are_what_the_models_used_before():
    """Built with default options, every method has the weights and computes the outputs and losses it had
    when each default was written at its call site (golden file recorded then; RIS_UPDATE_GOLDEN=1 rewrites it
    after an intended change)."""
    with one_thread():
        now = default_models()
    if os.environ.get("RIS_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    before = json.loads(GOLDEN.read_text())
    assert sorted(now) == sorted(before)
    for case, rec in before.items():
        assert now[case]["keys"] == rec["keys"], f"{case}: other weights"
        if "logits" in rec:  # tiny models: one seeded forward
            assert now[case]["logits"] == pytest.approx(rec["logits"], rel=1e-4, abs=1e-6), case
            assert now[case]["loss"] == pytest.approx(rec["loss"], rel=1e-4, abs=1e-6), case


def test_config_yaml_options_reach_the_model_checked(config):
    """Every run of both scales resolves to options its model accepts."""
    cat = read_catalog()
    for scale in ("demo", "paper"):
        cfg = copy.deepcopy({**config, "scale": scale})
        for key in all_runs(cfg):
            options = run_config(cfg, key)["model"]["options"]
            resolve(options, cat.method_options(key.method), f"{scale}: {key.name}")
