"""The demo's backbone pretraining (ris/training/pretrain.py): its file, how runs load it, the DAG's jobs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from ris.cli import main
from ris.config import ConfigError, RunKey, load_yaml, pretrain_config, run_config, validate
from ris.models import ModelConfig, build_model
from ris.models.backbones import load_pretrained_file
from ris.models.registry import BACKBONES
from ris.training.pretrain import PretrainConfig, dense_labels
from ris.training.tracking import flatten
from ris.utils import read_json
from tests.helpers import REPO, copy_workflow, shrink_pretraining, snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def demo_config(tmp_path) -> dict:
    cfg = load_yaml(REPO / "config.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["data_dir"] = str(tmp_path / "data")
    shrink_pretraining(cfg)
    return cfg


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """``ris pretrain`` of the tiny Swin, with the demo's settings shrunk: (config, weights file)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = demo_config(tmp)
    out = tmp / "results" / "pretrained" / "swin_b.pt"
    job = pretrain_config(cfg, "swin_b")
    assert (
        main(
            [
                "pretrain",
                "--config",
                json.dumps(job),
                "--out",
                str(out),
                "--metrics",
                str(out.with_suffix(".json")),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return cfg, out


def test_pretrain_writes_a_loadable_file(pretrained):
    cfg, out = pretrained
    data = torch.load(out, map_location="cpu", weights_only=True)
    assert (data["family"], data["size"], data["image_size"], data["task"]) == (
        "swin_b",
        "tiny",
        64,
        "dense_attributes",
    )
    assert data["seed"] == cfg["scales"]["demo"]["pretrain"]["families"]["swin_b"]["seed"] != cfg["synthetic"]["seed"]
    assert set(data["held_out"]) == {"shape", "color", "size", "objects"} and data["held_out"]["objects"] > 0
    assert data["classes"]["shape"][0] == "background" and len(data["classes"]["shape"]) == 7
    metrics = read_json(out.with_suffix(".json"))
    assert metrics["held_out"] == data["held_out"] and metrics["steps"] == 2  # (12 - 4) // 4 steps x 1 epoch
    fresh = BACKBONES["swin_b"]("tiny", 64)
    header = load_pretrained_file(fresh, str(out), "swin_b", "tiny")
    assert header["family"] == "swin_b" and "state_dict" not in header
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, data["state_dict"][k]), k


def test_dense_labels_come_from_the_annotations(tmp_path):
    """Pixel labels = decoded instances.json masks x objects.json attributes; train split only, no val/test."""
    from ris.data.synthetic import synthesize

    job = PretrainConfig.from_dict({"family": "swin_b", "seed": 7, "num_images": 6, "held_out": 2})
    synthesize(tmp_path, job.synthetic_config())
    instances = read_json(tmp_path / "instances.json")
    assert instances["info"]["config"]["num_images"] == {"train": 6} and instances["info"]["config"]["seed"] == 7
    data = dense_labels(tmp_path, 64)
    assert data.images.shape == (6, 3, 64, 64) and data.labels.shape == (6, 4, 64, 64)
    objects = read_json(tmp_path / "objects.json")["objects"]
    ann = instances["annotations"][0]
    o = objects[str(ann["id"])]
    mask, cls = data.objects[0][0]
    assert mask.sum() == ann["area"]
    assert [data.classes[k][c] for k, c in zip(("shape", "color", "size"), cls)] == [o["shape"], o["color"], o["size"]]
    assert (data.labels[0, 0][torch.from_numpy(mask)] == cls[0]).all()
    assert (data.labels[:, 0] == 0).float().mean() > 0.3  # background stays background


def test_run_starts_from_the_pretrained_weights(pretrained):
    """The demo's run config points at the pretraining job's file and the built model holds its weights."""
    cfg, out = pretrained
    run = run_config(cfg, RunKey("synthetic", "lavt", "swin_b", 0, 0))
    assert flatten(run)["model.pretrained_backbone"] == str(out)  # an MLflow param of the run
    model_cfg = run["model"]
    model_cfg = {**model_cfg, "pretrained_text": None}  # the backbone is what is tested: no MiniLM to load
    saved = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    model = build_model(ModelConfig.from_dict(model_cfg))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, saved[k]), f"backbone tensor {k} is not the pretrained one"
    random_init = build_model(ModelConfig.from_dict({**model_cfg, "pretrained_backbone": False}))
    weights = [k for k in saved if k.endswith("weight")]
    assert any(not torch.equal(random_init.backbone.state_dict()[k], saved[k]) for k in weights)


def test_mismatched_family_is_a_clear_error(pretrained, tmp_path):
    _, out = pretrained
    with pytest.raises(
        ValueError, match=rf"{out}: field family is 'swin_b', but the model's backbone family is 'resnet101'"
    ):
        build_model(
            ModelConfig(method="lavt", backbone="resnet101", size="tiny", image_size=64, pretrained_backbone=str(out))
        )
    with pytest.raises(FileNotFoundError, match="nothere.pt: pretrained backbone file not found"):
        build_model(
            ModelConfig(method="lavt", size="tiny", image_size=64, pretrained_backbone=str(tmp_path / "nothere.pt"))
        )


def test_frozen_stages_keep_their_weights():
    """Option freeze_backbone_stages k: the stem and first k stages get no gradient and BatchNorm stays in eval."""
    model = build_model(
        ModelConfig(
            method="lavt", backbone="resnet101", size="tiny", image_size=64, options={"freeze_backbone_stages": 1}
        )
    )
    bb = model.backbone
    model.train()
    assert not bb.stem.training and not bb.stages[0].training and bb.stages[1].training
    assert not any(p.requires_grad for p in [*bb.stem.parameters(), *bb.stages[0].parameters()])
    assert all(p.requires_grad for p in bb.stages[1].parameters())
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    out = model(torch.randn(2, 3, 64, 64), torch.randint(1, 100, (2, 6)), torch.ones(2, 6, dtype=torch.long))
    model.loss(out, torch.randint(0, 2, (2, 64, 64)))["loss"].backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    after = bb.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("stem.", "stages.0.")))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("stages.1."))
    with pytest.raises(ValueError, match=r"freeze_backbone_stages: expected an integer >= 0 and <= 4, got 5"):
        build_model(ModelConfig(method="lavt", size="tiny", image_size=64, options={"freeze_backbone_stages": 5}))


def test_pretrain_config_errors(tmp_path):
    cfg = demo_config(tmp_path)
    del cfg["scales"]["demo"]["pretrain"]["families"]["darknet53"]
    with pytest.raises(ConfigError, match="scales.demo.pretrain.families: no entry .seed. for backbone"):
        validate(cfg, SCHEMA)
    cfg = demo_config(tmp_path)
    cfg["scales"]["demo"]["pretrain"]["families"]["swin_b"]["seed"] = cfg["synthetic"]["seed"]
    with pytest.raises(ConfigError, match="swin_b uses the demo data's seed"):
        validate(cfg, SCHEMA)


def _planned(tmp_path, *args: str) -> dict[str, int]:
    work = copy_workflow(tmp_path)
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    r = snakemake(work, "-n", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = {}
    for line in (r.stdout + r.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_demo_dry_run_plans_one_pretrain_job_per_family(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    families = {r["backbone"] for t in cfg["tables"].values() for r in t["runs"]}
    counts = _planned(tmp_path)
    assert counts["pretrain"] == len(families) == 3


def test_paper_dry_run_plans_no_pretrain_job(tmp_path):
    counts = _planned(tmp_path, "--config", "scale=paper")
    assert "pretrain" not in counts and counts["train"] == 24
