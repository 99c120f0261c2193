"""The experiment grid: validate ``config.yaml``, expand tables into runs, resolve one run's settings.

The Snakefile calls these functions to build the DAG; ``ris train`` receives the resolved run
configuration (plain JSON) and stores it in every checkpoint, so a checkpoint is self-describing.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ris.catalog import Catalog, read_catalog
from ris.options import TRAIN_OPTIONS, OptionError, resolve, unknown_key


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file, the field and what was expected."""


def load_yaml(path: Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def validate(config: dict, schema_path: Path, source: str = "config.yaml", catalog: Catalog | None = None) -> None:
    """Check ``config`` against the JSON schema, the declared options and the cross-references the schema
    cannot express.

    Method and backbone names and every option's declaration come from :mod:`ris.catalog`, which reads the
    model sources without importing torch (a Snakemake dry run stays fast); ``catalog`` replaces it (tests).
    Of the presets under ``scales`` only the active one (``scale``) is checked: a mistake under another
    preset fails that scale's runs, not these.
    """
    cat = catalog or read_catalog()
    validator = jsonschema.Draft202012Validator(_schema(config, schema_path, cat))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    if errors:
        raise ConfigError(_schema_message(errors, source))
    if config["scale"] not in config["scales"]:
        raise ConfigError(
            f"{source}: field scale: {config['scale']!r} is not one of the presets under scales "
            f"({', '.join(config['scales'])})"
        )
    try:
        _validate_declared(config, source, cat)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    for tname, table in config["tables"].items():
        for d, splits in table["datasets"].items():
            real = dataset_for(config, d)
            if real not in config["datasets"]:
                raise ConfigError(
                    f"{source}: field tables.{tname}.datasets: dataset {d!r} (-> {real!r}) is not declared "
                    f"under datasets ({', '.join(config['datasets'])})"
                )
            missing = [s for s in splits if s not in config["datasets"][real]["splits"]]
            if missing:
                raise ConfigError(
                    f"{source}: field tables.{tname}.datasets.{d}: split(s) {', '.join(missing)} are not among "
                    f"the splits of dataset {real!r} ({', '.join(config['datasets'][real]['splits'])})"
                )
    _validate_stats(config, source)
    _validate_pretrain(config, source)


def _schema(config: dict, schema_path: Path, cat: Catalog) -> dict:
    """The schema with the registered method and backbone names, checking the active preset only."""
    schema = load_yaml(schema_path)
    schema["$defs"]["method"]["enum"] = sorted(cat.methods)
    schema["$defs"]["backbone"]["enum"] = sorted(cat.backbones)
    if isinstance(config.get("scale"), str):
        schema["properties"]["scales"]["properties"] = {config["scale"]: {"$ref": "#/$defs/preset"}}
    return schema


def _schema_message(errors: list, source: str) -> str:
    """The first schema error as one line: the field, what is wrong, the closest valid name of an unknown one."""
    e, more = errors[0], f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    where = f"{source}: field " + (".".join(str(p) for p in e.path) or "(top level)")
    if e.validator == "additionalProperties":
        known = e.schema.get("properties", {})
        return unknown_key(where, next(k for k in e.instance if k not in known), known) + more
    close = difflib.get_close_matches(str(e.instance), map(str, e.validator_value), 1) if e.validator == "enum" else []
    return f"{where}: {e.message}" + (f" (did you mean {close[0]!r}?)" if close else "") + more


def _validate_declared(config: dict, source: str, cat: Catalog) -> None:
    """The declared settings (:mod:`ris.options`): every method's options and train overrides, the active preset's
    shared model options and train keys, and its image size against the stride of each backbone of its grid."""
    where, p = f"{source}: field scales.{config['scale']}", preset(config)
    resolve(p["train"], TRAIN_OPTIONS, f"{where}.train")
    cat.resolve_options(None, p.get("model_options"), f"{where}.model_options")
    for m, entry in config["methods"].items():
        cat.resolve_options(m, entry.get("options"), f"{source}: field methods.{m}.options")
        resolve(entry.get("train"), TRAIN_OPTIONS, f"{source}: field methods.{m}.train", partial=True)
    for m, b in sorted({(k.method, k.backbone) for k in all_runs(config)}):
        own = config["methods"].get(m, {}).get("train", {})
        field = f"methods.{m}.train" if "image_size" in own else f"scales.{config['scale']}.train"
        cat.check_image_size(b, {**p["train"], **own}["image_size"], f"{source}: field {field}.image_size")


def _validate_stats(config: dict, source: str) -> None:
    """The ``stats:`` section names a declared table, and its comparisons name runs of that table."""
    st = config.get("stats")
    if not st:
        return
    if st["table"] not in config["tables"]:
        raise ConfigError(
            f"{source}: field stats.table: {st['table']!r} is not a table under tables ({', '.join(config['tables'])})"
        )
    runs = [(r["method"], r["backbone"], int(r.get("num_masks", 0))) for r in scale_table_runs(config, st["table"])]
    for i, pair in enumerate(st.get("comparisons", [])):
        for side in ("a", "b"):
            r = pair[side]
            if (r["method"], r["backbone"], int(r.get("num_masks", 0))) not in runs:
                raise ConfigError(
                    f"{source}: field stats.comparisons.{i}.{side}: {r} is not a run of table {st['table']!r}"
                )


def _validate_pretrain(config: dict, source: str) -> None:
    """A scale that pretrains its backbones has an entry (a seed) for every family it uses, none the demo data's."""
    section = preset(config).get("pretrain")
    if not section:
        return
    where = f"{source}: field scales.{config['scale']}.pretrain"
    if preset(config).get("pretrained_backbone"):
        raise ConfigError(f"{where}: a scale sets either pretrain or pretrained_backbone: true, not both")
    where += ".families"
    missing = [b for b in pretrain_backbones(config) if b not in section["families"]]
    if missing:
        raise ConfigError(f"{where}: no entry (seed) for backbone(s) {', '.join(missing)} used by the grid")
    data_seed = int((config.get("synthetic") or {}).get("seed", 0))
    clash = [b for b, f in section["families"].items() if int(f["seed"]) == data_seed]
    if clash:
        raise ConfigError(
            f"{where}: {', '.join(clash)} uses the demo data's seed {data_seed}; pretraining must not see its images"
        )


def stats_config(config: dict) -> dict:
    """``config`` with the ``stats:`` section's seeds: the runs the ``stats`` target trains and evaluates."""
    return {**config, "seeds": list(config["stats"]["seeds"])}


def preset(config: dict) -> dict:
    return config["scales"][config["scale"]]


def dataset_for(config: dict, name: str) -> str:
    """The dataset trained on for a table's dataset name at the current scale (demo aliases)."""
    return preset(config).get("dataset_alias", {}).get(name, name)


@dataclass(frozen=True, order=True)
class RunKey:
    """Identity of one training run; also its Snakemake wildcards."""

    dataset: str
    method: str
    backbone: str
    num_masks: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.backbone}-n{self.num_masks}-s{self.seed}"

    @property
    def path(self) -> str:
        return f"{self.dataset}/{self.name}"


def scale_table_runs(config: dict, table: str) -> list[dict]:
    """The runs a table declares that this scale trains: all of them, unless ``scales.<scale>.num_masks`` lists
    the numbers of masks N it keeps (e.g. ``[0, 50, 100, 200]``; the shipped presets keep every N)."""
    keep = config["scales"][config["scale"]].get("num_masks")
    runs = config["tables"][table]["runs"]
    return [r for r in runs if keep is None or int(r.get("num_masks", 0)) in keep]


def dropped_num_masks(config: dict, table: str) -> list[int]:
    """The N of a table's runs this scale does not train (see :func:`scale_table_runs`), sorted."""
    kept = {int(r.get("num_masks", 0)) for r in scale_table_runs(config, table)}
    return sorted({int(r.get("num_masks", 0)) for r in config["tables"][table]["runs"]} - kept)


def table_runs(config: dict, table: str) -> list[RunKey]:
    """Every run a table needs at this scale (datasets x runs x seeds), in table order."""
    t = config["tables"][table]
    keys = []
    for d in dict.fromkeys(dataset_for(config, d) for d in t["datasets"]):
        for run in scale_table_runs(config, table):
            for seed in config["seeds"]:
                keys.append(
                    RunKey(dataset_for(config, d), run["method"], run["backbone"], run.get("num_masks", 0), seed)
                )
    return keys


def all_runs(config: dict) -> list[RunKey]:
    """Unique runs over all tables: a run shared by several tables is trained once."""
    return sorted({k for t in config["tables"] for k in table_runs(config, t)})


def mask_figure_runs(config: dict) -> dict[str, RunKey]:
    """method -> the run whose mask hypotheses its figure shows (``mask_diagnostics.figures``): the grid's run of
    that method, backbone and N (first seed, first in run order). A method the tables do not train is skipped;
    an entry that no run of a trained method matches is an error naming it."""
    runs = all_runs(config)
    seed = config["seeds"][0]
    out = {}
    for method, want in (config.get("mask_diagnostics") or {}).get("figures", {}).items():
        if not any(k.method == method for k in runs):
            continue
        n = int(want.get("num_masks", 0))
        match = [k for k in runs if (k.method, k.backbone, k.num_masks, k.seed) == (method, want["backbone"], n, seed)]
        if not match:
            raise ValueError(
                f"config.yaml: mask_diagnostics.figures.{method}: no run of the tables is {method} on "
                f"{want['backbone']} with num_masks {n} and seed {seed}"
            )
        out[method] = match[0]
    return out


def evaluations(config: dict) -> list[tuple[RunKey, str]]:
    """Unique (run, split) evaluations over all tables."""
    pairs = set()
    for t in config["tables"]:
        pairs.update(table_evaluations(config, t))
    return sorted(pairs)


def evaluation_splits(config: dict) -> dict[RunKey, list[str]]:
    """The splits each run is evaluated on, in first-use order: those of every table and, with a ``stats:``
    section, of the stats table's runs (its extra seeds). One evaluation job per run covers them all."""
    pairs = [p for t in config["tables"] for p in table_evaluations(config, t)]
    if config.get("stats"):
        pairs += table_evaluations(stats_config(config), config["stats"]["table"])
    out: dict[RunKey, list[str]] = {}
    for key, split in pairs:
        if split not in out.setdefault(key, []):
            out[key].append(split)
    return out


def table_evaluations(config: dict, table: str) -> list[tuple[RunKey, str]]:
    """(run, split) pairs of one table, in table order, without repeats (demo aliases collapse datasets)."""
    t = config["tables"][table]
    pairs = []
    for d, splits in t["datasets"].items():
        real = dataset_for(config, d)
        for k in table_runs(config, table):
            if k.dataset == real:
                pairs.extend((k, s) for s in splits)
    return list(dict.fromkeys(pairs))


#: ``scales.<scale>.evaluate`` settings a scale leaves out (the demo's: the CPU, one thread, fp32).
EVALUATE_DEFAULTS: dict[str, Any] = {"device": "cpu", "precision": "fp32", "batch_size": 16, "threads": 1,
                                     "num_workers": 0}  # fmt: skip


def evaluate_settings(config: dict) -> dict[str, Any]:
    """The scale's ``evaluate:`` section over :data:`EVALUATE_DEFAULTS`: what the evaluate rule passes to
    ``ris evaluate`` (device, precision, batch size, threads, workers) and how its jobs are sized."""
    return {**EVALUATE_DEFAULTS, **preset(config).get("evaluate", {})}


def evaluate_gpus(config: dict) -> int:
    """GPUs of an evaluate job (the rule's ``gpu`` resource): 1 when the scale evaluates on CUDA, else 0."""
    return int(str(evaluate_settings(config)["device"]).startswith("cuda"))


def evaluate_runtime_min(config: dict, num_splits: int) -> int:
    """Minutes an evaluate job of ``num_splits`` splits may run (the rule's ``runtime``, sbatch -t).

    ``setup_min + runtime_margin * num_splits * split_samples / samples_per_s / 60``, rounded up: the
    rate ``samples_per_s`` and its margin are in config.yaml (``scales.<scale>.evaluate``), the one place
    where a measured number replaces the estimate.
    """
    e = evaluate_settings(config)
    missing = [k for k in ("samples_per_s", "split_samples", "runtime_margin", "setup_min") if k not in e]
    if missing:
        raise ConfigError(f"config.yaml: field scales.{config['scale']}.evaluate: missing {', '.join(missing)}")
    seconds = float(e["runtime_margin"]) * num_splits * int(e["split_samples"]) / float(e["samples_per_s"])
    return int(e["setup_min"]) + -(-int(round(seconds)) // 60)


def tracking_uri(config: dict) -> str:
    """MLflow tracking URI: config, else $MLFLOW_TRACKING_URI, else a SQLite file under results_dir."""
    uri = (config.get("mlflow") or {}).get("tracking_uri")
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str(Path(config["results_dir"]).resolve() / "mlflow.db")


def rehearsing(config: dict) -> bool:
    """``rehearsal:`` as a boolean (ris/rehearsal.py): true/false in config.yaml, or the string that
    ``--config rehearsal=true`` gives."""
    value = config.get("rehearsal", False)
    return value if isinstance(value, bool) else str(value).lower() == "true"


def experiment_name(config: dict, dataset: str) -> str:
    """One MLflow experiment per (scale, dataset); a rehearsal's runs in their own (``ris-paper-rehearsal-...``)."""
    return f"ris-{config['scale']}{'-rehearsal' if rehearsing(config) else ''}-{dataset}"


def run_config(config: dict, key: RunKey) -> dict[str, Any]:
    """The fully resolved settings of one run (what ``ris train`` receives and checkpoints store)."""
    p = preset(config)
    method = config["methods"].get(key.method, {})
    train = copy.deepcopy(p["train"])
    train.update(method.get("train", {}))
    data_dir = Path(config["data_dir"])
    tables = sorted(t for t in config["tables"] if key in table_runs(config, t))
    return {
        "run": key.path,
        "dataset": key.dataset,
        "seed": key.seed,
        "data": {
            "prepared_dir": str(data_dir / "prepared" / key.dataset),
            "images_dir": str(images_dir(config, key.dataset)),
            **({"text_features": text_features_path(config, key.dataset)} if frozen_text(config) else {}),
        },
        "model": {
            "method": key.method,
            "backbone": key.backbone,
            "text_encoder": "bert-base-uncased",
            "size": p["model_size"],
            "image_size": train["image_size"],
            "num_masks": key.num_masks,
            "pretrained_backbone": pretrained_backbone(config, key.backbone),
            "pretrained_text": p.get("pretrained_text"),
            "options": {**copy.deepcopy(p.get("model_options", {})), **copy.deepcopy(method.get("options", {}))},
        },
        "train": train,
        # a rehearsal's (ris/rehearsal.py): the packaged tokenizer that replaces the hub's where the hub is unreachable
        **({"rehearsal": {"vocabulary": config["rehearsal_slice"]["vocabulary"]}} if rehearsing(config) else {}),
        "tracking": {
            "uri": tracking_uri(config),
            "experiment": experiment_name(config, key.dataset),
            "tags": {
                "scale": config["scale"],
                "dataset": key.dataset,
                "method": key.method,
                "backbone": key.backbone,
                "num_masks": str(key.num_masks),
                "seed": str(key.seed),
                "tables": ",".join(tables),
                **({"rehearsal": "true"} if rehearsing(config) else {}),
            },
        },
    }


def pretrain_backbones(config: dict) -> list[str]:
    """Backbone families the scale pretrains itself (``scales.<scale>.pretrain``: the demo's ImageNet, one
    ``pretrain`` job each): those of every run of the grid, stats runs included; none at paper scale."""
    if not preset(config).get("pretrain"):
        return []
    return sorted({k.backbone for k in all_runs(config)})  # the stats runs are a table's runs: same families


def pretrained_path(config: dict, backbone: str) -> str:
    """The pretraining job's weights of a backbone family (``ris pretrain``)."""
    return str(Path(config["results_dir"]) / "pretrained" / f"{backbone}.pt")


def pretrained_backbone(config: dict, backbone: str) -> bool | str:
    """A run's ``model.pretrained_backbone``: the pretraining job's file where the scale pretrains (demo),
    else the preset's boolean (paper: True, timm's ImageNet weights)."""
    if preset(config).get("pretrain"):
        return pretrained_path(config, backbone)
    return bool(preset(config).get("pretrained_backbone", False))


def pretrain_config(config: dict, backbone: str) -> dict[str, Any]:
    """Settings of one pretraining job (ris.training.pretrain.PretrainConfig): the preset's ``pretrain``
    section updated by this family's entry (seed, ...), the scale's model and image size, the demo
    generator's other settings."""
    p = preset(config)
    section = {k: v for k, v in p["pretrain"].items() if k != "families"}
    return {
        **section,
        **p["pretrain"]["families"][backbone],  # its seed and any setting of its own (e.g. epochs)
        "family": backbone,
        "size": p["model_size"],
        "image_size": int(p["train"]["image_size"]),
        "synthetic": copy.deepcopy(config.get("synthetic") or {}),
    }


def frozen_text(config: dict) -> str | None:
    """The pretrained text encoder this scale freezes (``pretrained_text`` with the model option
    ``freeze_text``: the demo's MiniLM), else None. Its features are computed once per dataset
    (``ris encode-text``, rule ``text_features``) and read by every training and evaluation job."""
    p = preset(config)
    return p.get("pretrained_text") if (p.get("model_options") or {}).get("freeze_text") else None


def text_features_path(config: dict, dataset: str) -> str:
    return str(Path(config["data_dir"]) / "text_features" / f"{dataset}.pt")


def released_checkpoint(config: dict, key: RunKey) -> dict[str, str] | None:
    """``{"format", "path"}`` when ``released_weights`` names an official checkpoint for this run, else None.

    Such a run is imported (``ris import-checkpoint``) instead of trained; every seed gets the same weights.
    """
    for entry in config.get("released_weights") or []:
        same_run = (entry["method"], entry["backbone"], entry.get("num_masks", 0)) == (
            key.method,
            key.backbone,
            key.num_masks,
        )
        if same_run and key.dataset in entry["checkpoints"]:
            return {"format": entry["format"], "path": entry["checkpoints"][key.dataset]}
    return None


def _paper_data(config: dict) -> dict:
    return config.get("paper_data") or {}


def refer_dir(config: dict, dataset: str) -> Path:
    """Folder holding ``refs(<splitBy>).p`` and ``instances.json`` of a dataset.

    Synthetic: ``<data_dir>/refer/<dataset>``; REFER datasets: ``<refer_root>/<folder>`` when the user
    brings a copy (``paper_data.refer_root``), else where the downloaded archive is extracted.
    """
    d = config["datasets"][dataset]
    if d["source"] == "synthetic":
        return Path(config["data_dir"]) / "refer" / dataset
    root = _paper_data(config).get("refer_root")
    return Path(root or Path(config["data_dir"]) / "refer") / d["folder"]


def images_dir(config: dict, dataset: str) -> Path:
    """Image folder of a dataset: synthetic images, a user's train2014/, or the extracted train2014.zip."""
    if config["datasets"][dataset]["source"] == "synthetic":
        return refer_dir(config, dataset) / "images"
    return Path(_paper_data(config).get("coco_images") or Path(config["data_dir"]) / "images" / "train2014")


def extracted_marker(config: dict, archive: str) -> str:
    """File written once ``archive`` has been downloaded, verified and extracted."""
    dest = "images" if archive == "train2014.zip" else "refer"
    return f"{config['data_dir']}/{dest}/.{archive}.extracted"


def prepare_inputs(config: dict, dataset: str) -> list[str]:
    """What the prepare job of a dataset waits for: synthesized files, download markers, or user files."""
    d = config["datasets"][dataset]
    folder = refer_dir(config, dataset)
    files = [str(folder / f"refs({d['split_by']}).p"), str(folder / "instances.json")]
    if d["source"] == "synthetic" or _paper_data(config).get("refer_root"):
        inputs = files
    else:
        inputs = [extracted_marker(config, d["archive"])]
    if d["source"] == "refer" and not _paper_data(config).get("coco_images"):
        inputs.append(extracted_marker(config, "train2014.zip"))
    return inputs
