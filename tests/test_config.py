"""Configuration: schema validation with clear messages, run expansion, run resolution."""

from __future__ import annotations

import copy

import pytest

from ris.config import (
    ConfigError,
    RunKey,
    all_runs,
    evaluation_splits,
    evaluations,
    load_yaml,
    run_config,
    stats_config,
    table_evaluations,
    validate,
)
from tests.helpers import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_shipped_config_is_valid(config):
    validate(config, SCHEMA)


def test_every_registered_method_and_backbone_is_accepted_and_no_other(config):
    """The schema's method and backbone names come from ris.catalog (equal to the registry: test_options.py)."""
    from ris.models import BACKBONES, METHODS

    for method in METHODS:
        for backbone in BACKBONES:
            bad = copy.deepcopy(config)
            bad["tables"]["main"]["runs"].append({"method": method, "backbone": backbone})
            validate(bad, SCHEMA)
    config["tables"]["main"]["runs"].append({"method": "segformer", "backbone": "swin_b"})
    with pytest.raises(ConfigError, match=r"field tables.main.runs.4.method: 'segformer' is not one of \['coupalign'"):
        validate(config, SCHEMA)


def test_schema_baselines_equal_the_implemented_ones():
    from ris.evaluation.baselines import BASELINES

    scale = load_yaml(SCHEMA)["$defs"]["preset"]["properties"]
    assert sorted(scale["baselines"]["items"]["enum"]) == sorted(BASELINES)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("tables"), "field (top level): 'tables' is a required property"),
        (lambda c: c.update(scale="huge"), "field scale: 'huge' is not one of the presets"),
        (
            lambda c: c["scales"]["demo"]["train"].update(epochs=0),
            "field scales.demo.train.epochs: expected an integer >= 1, got 0",
        ),
        (
            lambda c: c["scales"]["demo"]["train"].update(lr=-1e-3),
            "field scales.demo.train.lr: expected a number > 0, got -0.001",
        ),
        (
            lambda c: c["scales"]["demo"]["train"].update(xyzzy=1),
            "field scales.demo.train: unknown key 'xyzzy' (valid: batch_size,",
        ),
        (
            lambda c: c["scales"]["demo"]["train"].update(image_size=100),
            "field scales.demo.train.image_size: expected a multiple of 32 (the stride of backbone darknet53), got 100",
        ),
        (
            lambda c: c["scales"]["demo"].update(model_option={}),
            "field scales.demo: unknown key 'model_option' (did you mean 'model_options'?)",
        ),
        (
            lambda c: c["scales"]["demo"]["model_options"].update(dice_wieght=1.0),
            "field scales.demo.model_options: unknown key 'dice_wieght' (did you mean 'dice_weight'?)",
        ),
        (
            lambda c: c["scales"]["demo"]["model_options"].update(wpa_heads=4),
            "field scales.demo.model_options: 'wpa_heads' is an option of coupalign, not of every method",
        ),
        (
            lambda c: c["methods"]["coupalign"]["options"].update(aux_wieght=0.5),
            "field methods.coupalign.options: unknown key 'aux_wieght' (did you mean 'aux_weight'?)",
        ),
        (
            lambda c: c["methods"]["lavt"]["options"].update(aux_weight=0.5),
            "field methods.lavt.options: 'aux_weight' is an option of coupalign, eavl, jmceln, not of lavt",
        ),
        (
            lambda c: c["methods"]["jmceln"]["options"].update(num_stages=0),
            "field methods.jmceln.options.num_stages: expected an integer >= 1, got 0",
        ),
        (
            lambda c: c["methods"]["eavl"].update(train={"micro_batch_size": "big"}),
            "field methods.eavl.train.micro_batch_size: expected an integer >= 1, 'auto' or null, got 'big'",
        ),
        (
            lambda c: c["methods"].update(coupalgin={}),
            "field methods: 'coupalgin' is not one of ['coupalign', 'eavl', 'jmceln', 'lavt'] (did you mean 'coupal",
        ),
        (
            lambda c: c["tables"]["main"]["runs"][0].update(backbone="vgg"),
            "field tables.main.runs.0.backbone: 'vgg' is not one of",
        ),
        (
            lambda c: c["tables"]["main"]["runs"][1].update(num_masks=-1),
            "field tables.main.runs.1.num_masks: -1 is less than the minimum of 0",
        ),
        (
            lambda c: c["tables"]["main"].update(datasets={"nope": ["val"]}),
            "dataset 'nope' (-> 'nope') is not declared",
        ),
        (
            lambda c: c.update(scale="paper") or c["scales"]["paper"]["evaluate"].update(device="gpu"),
            "field scales.paper.evaluate.device: 'gpu' does not match",
        ),
        (
            lambda c: c.update(scale="paper") or c["scales"]["paper"]["evaluate"].update(samples_per_s=0),
            "field scales.paper.evaluate.samples_per_s: 0 is less than or equal to the minimum",
        ),
    ],
)
def test_invalid_configs_name_the_field(config, mutate, message):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as e:
        validate(bad, SCHEMA)
    assert message in str(e.value)
    assert str(e.value).startswith("config.yaml: ")


def test_only_the_active_preset_is_checked(config):
    """A mistake under scales.paper fails a paper-scale run, not the demo (and the other way round)."""
    config["scales"]["paper"]["train"]["lrr"] = 1.0
    config["scales"]["paper"]["model_options"]["activation_checkpointin"] = True
    validate(config, SCHEMA)
    with pytest.raises(ConfigError, match=r"field scales.paper.train: unknown key 'lrr' \(did you mean 'lr'\?\)"):
        validate({**config, "scale": "paper"}, SCHEMA)
    config["scales"]["paper"]["train"].pop("lrr")
    with pytest.raises(ConfigError, match="unknown key 'activation_checkpointin' .did you mean 'activation_checkp"):
        validate({**config, "scale": "paper"}, SCHEMA)
    config["scales"]["paper"]["model_options"].pop("activation_checkpointin")
    config["scales"]["demo"]["train"]["epochs"] = 0
    validate({**config, "scale": "paper"}, SCHEMA)


# Two small tables of the tests' own (not config.yaml's): CoupAlign N = 100 is in both; at demo scale all their
# datasets alias to the one synthetic set.
TWO_TABLES = {
    "one": {
        "caption": "One.",
        "datasets": {"refcoco": ["val", "testA"]},
        "metrics": ["oIoU"],
        "runs": [
            {"method": "lavt", "backbone": "swin_b"},
            {"method": "coupalign", "backbone": "swin_b", "num_masks": 100},
        ],
    },
    "two": {
        "caption": "Two.",
        "datasets": {"refcoco+": ["val"], "refcocog_umd": ["val", "test"]},
        "metrics": ["mIoU"],
        "runs": [{"method": "coupalign", "backbone": "swin_b", "num_masks": n} for n in (0, 100)],
    },
}


def test_runs_shared_by_tables_are_trained_once(config):
    config.update(tables=copy.deepcopy(TWO_TABLES), seeds=[0])
    runs = all_runs(config)
    assert sorted((k.method, k.num_masks) for k in runs) == [("coupalign", 0), ("coupalign", 100), ("lavt", 0)]
    assert {k.dataset for k in runs} == {"synthetic"}
    # the tables' datasets all alias to one synthetic set: each split evaluated once per run
    shared = [s for k, s in evaluations(config) if (k.method, k.num_masks) == ("coupalign", 100)]
    assert sorted(shared) == ["test", "testA", "val"]


def test_paper_grid_and_seeds(config):
    config.update(tables=copy.deepcopy(TWO_TABLES), seeds=[0, 1], scale="paper")
    runs = all_runs(config)
    assert len(runs) == 2 * (2 + 2 * 2)  # seeds x (table one's runs on RefCOCO + table two's on two datasets)
    assert {k.dataset for k in runs} == {"refcoco", "refcoco+", "refcocog_umd"}
    pairs = evaluations(config)
    assert (RunKey("refcocog_umd", "coupalign", "swin_b", 0, 1), "test") in pairs
    assert (RunKey("refcoco", "coupalign", "swin_b", 100, 0), "testA") in pairs
    assert (RunKey("refcoco+", "coupalign", "swin_b", 100, 1), "testA") not in pairs  # table two has val only there


@pytest.mark.parametrize("scale", ["demo", "paper"])
def test_one_evaluation_job_per_run_covers_every_split(config, scale):
    """``evaluation_splits`` (the evaluate rule's --splits) holds exactly the tables' and the stats' pairs."""
    config["scale"] = scale
    groups = evaluation_splits(config)
    pairs = {(k, s) for k, splits in groups.items() for s in splits}
    stats_pairs = set(table_evaluations(stats_config(config), config["stats"]["table"]))
    assert pairs == set(evaluations(config)) | stats_pairs
    assert all(len(splits) == len(set(splits)) for splits in groups.values())
    if scale == "paper":
        # the shipped paper grid itself, as docs/performance.md quotes it (44 evaluations in 24 jobs)
        assert len(evaluations(config)) == 44 and len(set(all_runs(config))) == 24
        assert groups[RunKey("refcoco", "lavt", "swin_b", 0, 0)] == ["val", "testA", "testB"]
    else:
        assert groups[RunKey("synthetic", "eavl", "swin_b", 0, 0)] == ["val", "testA", "testB", "test"]
        assert groups[RunKey("synthetic", "coupalign", "swin_b", 100, 2)] == ["val"]  # a stats seed


def test_frozen_text_features_only_where_the_scale_freezes_the_encoder(config):
    """Demo: every run reads its dataset's MiniLM features file; paper (BERT fine-tuned): no such file."""
    key = RunKey("synthetic", "lavt", "swin_b", 0, 0)
    assert run_config(config, key)["data"]["text_features"] == "data/text_features/synthetic.pt"
    config["scale"] = "paper"
    assert "text_features" not in run_config(config, RunKey("refcoco", "lavt", "swin_b", 0, 0))["data"]


def test_run_config_resolves_preset_and_method(config):
    config["methods"]["lavt"]["train"] = {"lr": 1.0e-2}
    rc = run_config(config, RunKey("synthetic", "lavt", "swin_b", 0, 0))
    assert rc["train"]["lr"] == 1.0e-2 and rc["train"]["epochs"] == config["scales"]["demo"]["train"]["epochs"]
    assert rc["model"]["size"] == "tiny" and rc["model"]["options"]["fusion_heads"] == 1
    assert rc["tracking"]["uri"].startswith("sqlite:////") and rc["tracking"]["uri"].endswith("results/mlflow.db")
    assert rc["tracking"]["tags"]["tables"] == "main"
    assert rc["model"]["options"]["dice_weight"] == 1.0  # the demo preset's model options reach every method


def test_tracking_uri_env_override(config, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    rc = run_config(config, RunKey("synthetic", "lavt", "swin_b", 0, 0))
    assert rc["tracking"]["uri"] == "http://127.0.0.1:5999"


def test_a_scale_trains_only_its_num_masks(config):
    """scales.<scale>.num_masks = [0, 50, 100, 200] keeps 4 of the N ablation's runs at that scale, the other
    scale trains all six; the table's note names the N left out."""
    from ris.config import scale_table_runs, table_runs
    from ris.report.spec import table_spec

    assert [r["num_masks"] for r in scale_table_runs(config, "mask_number")] == [0, 20, 50, 100, 150, 200]
    config = copy.deepcopy(config)
    config["scales"]["demo"]["num_masks"] = [0, 50, 100, 200]
    demo = sorted({k.num_masks for k in table_runs(config, "mask_number")})
    assert demo == [0, 50, 100, 200]
    assert [r["num_masks"] for r in table_spec(config, "mask_number")["runs"]] == [0, 50, 100, 200]
    assert "N = 20, 150 not trained at this scale (scales.demo.num_masks)" in table_spec(config, "mask_number")["note"]
    paper = copy.deepcopy(config)
    paper["scale"] = "paper"
    assert [r["num_masks"] for r in scale_table_runs(paper, "mask_number")] == [0, 20, 50, 100, 150, 200]
    assert "not trained" not in table_spec(paper, "mask_number")["note"]
