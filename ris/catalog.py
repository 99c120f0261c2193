"""What the models package registers, read from its sources without importing it (no torch).

The Snakefile and ``ris.cli`` must not import torch, yet planning checks method names, their options and
the input size each backbone needs. This module reads the import line of ``ris/models/__init__.py``, then
in each module it names the classes and functions decorated with ``@register_method("name")``,
``@register_backbone("name", stride=...)`` and ``@register_text_encoder("name")``, and evaluates a method
class's ``OPTIONS`` from literals, ``Option(...)`` and the names of :mod:`ris.options` only.
``tests/test_options.py`` checks that it equals the runtime registry. ``python -m ris.catalog`` prints
``docs/options.md``.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ris import options as opts
from ris.options import MODEL_OPTIONS, MODEL_SETTINGS, TRAIN_OPTIONS, Option, OptionError, resolve, unknown_key

__all__ = ["MODELS_DIR", "RUN_SECTIONS", "Catalog", "Method", "check_run_settings", "options_markdown", "read_catalog"]

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The top-level keys of a run config (``ris.config.run_config``; ``rehearsal`` in a rehearsal's runs only).
RUN_SECTIONS = ("run", "dataset", "seed", "data", "model", "train", "tracking", "rehearsal")
_REGISTER = ("register_method", "register_backbone", "register_text_encoder")
_NAMESPACE = {
    **{n: getattr(opts, n) for n in opts.__all__},
    **{t.__name__: t for t in (bool, int, float, str, list, dict)},
}


@dataclass(frozen=True)
class Method:
    """A registered method: its module (a path from the repository root), class and own options (the shared
    ones aside)."""

    name: str
    module: str
    cls: str
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Catalog:
    """Registered methods, backbones (name -> stride: the input side must be a multiple of it), text encoders."""

    methods: dict[str, Method]
    backbones: dict[str, int]
    text_encoders: tuple[str, ...]

    def method_options(self, method: str) -> tuple[Option, ...]:
        """Every option ``method`` takes: the shared ones, then its own."""
        return (*MODEL_OPTIONS, *self.methods[method].options)

    def resolve_options(self, method: str | None, given: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """``given`` checked against the options of ``method`` (None: the shared ones, given to every method) and
        completed with their defaults; an option of another method is named as such."""
        declared = self.method_options(method) if method else MODEL_OPTIONS
        for key in given or {}:
            owners = [m.name for m in self.methods.values() if key in {o.name for o in m.options}]
            if owners and key not in {o.name for o in declared}:
                raise OptionError(
                    f"{where}: {key!r} is an option of {', '.join(owners)}, not of {method or 'every method'}"
                    + ("" if method else ": set it under methods.<method>.options")
                )
        return resolve(given, declared, where)

    def check_name(self, kind: str, name: Any, where: str) -> None:
        """OptionError unless ``name`` is a registered method / backbone / text encoder."""
        known = {"method": self.methods, "backbone": self.backbones, "text encoder": self.text_encoders}[kind]
        if name not in known:
            raise OptionError(unknown_key(where, name, known, what=kind))

    def check_image_size(self, backbone: str, size: int, where: str) -> None:
        """OptionError unless ``size`` is a multiple of the backbone's stride (every stage halves it exactly)."""
        stride = self.backbones[backbone]
        if size % stride:
            raise OptionError(
                f"{where}: expected a multiple of {stride} (the stride of backbone {backbone}), got {size}"
            )


@functools.cache
def read_catalog(models_dir: Path = MODELS_DIR) -> Catalog:
    """The registry as ``ris/models/__init__.py`` builds it, from the sources of ``models_dir``."""
    found: dict[str, dict[str, Any]] = {kind: {} for kind in _REGISTER}
    for module in _imported_modules(models_dir / "__init__.py"):
        path = models_dir / f"{module}.py"
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            for deco in getattr(node, "decorator_list", []):
                kind = _register_call(deco)
                if kind is None:
                    continue
                name = ast.literal_eval(deco.args[0])
                if name in found[kind]:
                    raise ValueError(f"{path}: {kind}({name!r}) is registered twice")
                found[kind][name] = _entry(kind, name, node, deco, path, module)
    return Catalog(found["register_method"], found["register_backbone"], tuple(sorted(found["register_text_encoder"])))


def _imported_modules(init: Path) -> list[str]:
    """The modules of ``from ris.models import a, b`` lines (importing them registers their entries)."""
    tree = ast.parse(init.read_text(), filename=str(init))
    return [a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "ris.models" for a in n.names]


def _register_call(deco: ast.expr) -> str | None:
    """``register_method`` etc. when ``deco`` is ``@register_method("name", ...)``, else None."""
    if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id in _REGISTER:
        return deco.func.id
    return None


def _entry(kind: str, name: str, node: ast.stmt, deco: ast.Call, path: Path, module: str) -> Any:
    """What the registry holds for one decorated definition: a backbone's stride, a method's declaration."""
    if kind == "register_backbone":
        stride = deco.args[1] if len(deco.args) > 1 else {k.arg: k.value for k in deco.keywords}.get("stride")
        if stride is None:
            raise ValueError(f"{path}: register_backbone({name!r}) declares no stride")
        return ast.literal_eval(stride)
    if kind == "register_text_encoder":
        return name
    return Method(name, f"ris/models/{module}.py", node.name, _class_options(node, path))


def _class_options(node: ast.ClassDef, path: Path) -> tuple[Option, ...]:
    """The value of ``OPTIONS = ...`` in the class body (none: no options of its own)."""
    for s in node.body:
        target = s.targets[0] if isinstance(s, ast.Assign) and len(s.targets) == 1 else getattr(s, "target", None)
        if isinstance(s, (ast.Assign, ast.AnnAssign)) and isinstance(target, ast.Name) and target.id == "OPTIONS":
            try:
                code = compile(ast.Expression(s.value), str(path), "eval")
                return tuple(eval(code, {"__builtins__": {}}, dict(_NAMESPACE)))
            except Exception as e:
                raise ValueError(
                    f"{path}: {node.name}.OPTIONS must be built from literals, Option(...) and the names of "
                    f"ris.options ({e})"
                ) from None
    return ()


def check_run_settings(cfg: dict[str, Any], cat: Catalog, source: str = "run config") -> None:
    """Check a run config's values before ``ris train`` builds or writes anything: its sections, ``model``
    (method, backbone, N, options), ``train``, and the image size against the backbone's stride; ``cat``:
    what is registered (``ris.models.registry.catalog()`` in a process that imported the models).

    Raises :class:`ris.options.OptionError` naming the field, and the closest valid name of an unknown one.
    """
    for key in cfg:
        if key not in RUN_SECTIONS:
            raise OptionError(unknown_key(source, key, RUN_SECTIONS))
    model = resolve(cfg["model"], MODEL_SETTINGS, f"{source}: field model")
    cat.check_name("method", model["method"], f"{source}: field model.method")
    cat.check_name("backbone", model["backbone"], f"{source}: field model.backbone")
    cat.check_name("text encoder", model["text_encoder"], f"{source}: field model.text_encoder")
    cat.resolve_options(model["method"], model["options"], f"{source}: field model.options")
    train = resolve(cfg["train"], TRAIN_OPTIONS, f"{source}: field train")
    for section, size in (("train", train["image_size"]), ("model", cfg["model"].get("image_size"))):
        if size is not None:
            cat.check_image_size(model["backbone"], size, f"{source}: field {section}.image_size")


# ------------------------------------------------------------------------------------------- docs/options.md

_INTRO = """\
# Options

Every setting a run takes, with its default, what it accepts and what it does. This page is generated from
the declarations: the shared options and the `train:` keys in `ris/options.py`, each method's own in the
`OPTIONS` of its class (`ris/models/<method>.py`). Regenerate it with `python -m ris.catalog > docs/options.md`;
`tests/test_options.py` fails when the page and the declarations differ.

Where they are set: model options under `methods.<method>.options` and `scales.<scale>.model_options` (shared
options only) of `config.yaml`, or `model.options` of a run config; training keys under `scales.<scale>.train`,
`methods.<method>.train` or a run config's `train`. Where they are checked: `ris.config.validate` at every
Snakemake start (the methods' options, and the active scale's preset only: a mistake under another preset
fails that scale's runs, not this one's), and `ris.catalog.check_run_settings` when `ris train` starts, before
it writes anything. An unknown key is an error naming the place and the closest valid name; a value of the
wrong type or out of range is an error naming the field and what it accepts. `null` defaults are explained in
the meaning. Fields valid one by one but not together (EAVL's `num_queries` against `num_masks`, JMCELN's
`stage_weights` against `num_stages`) are refused when `ris train` builds the model, still before it writes the
run folder; `snakemake -n` does not see them.
"""


def _table(options: tuple[Option, ...]) -> list[str]:
    rows = ["| name | default | accepts | meaning |", "|---|---|---|---|"]
    for o in options:
        cells = [f"`{o.name}`", "required" if o.default is opts.REQUIRED else f"`{opts.config_text(o.default)}`",
                 o.expected(), o.help]  # fmt: skip
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def options_markdown(cat: Catalog | None = None) -> str:
    """docs/options.md: every declared option (shared, per method, train, run config model keys), the backbones."""
    cat = cat or read_catalog()
    out = [_INTRO, "## Model options of every method", "", *_table(MODEL_OPTIONS), ""]
    for m in sorted(cat.methods.values(), key=lambda m: m.name):
        path = MODELS_DIR.parents[1] / m.module
        summary = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n")[0]
        own = _table(m.options) if m.options else ["No options of its own."]
        out += [f"## Method `{m.name}`", "", f"`{m.cls}` in `{m.module}`: {summary}", "", *own, ""]
    out += ["## Training: `train:`", "", *_table(TRAIN_OPTIONS), ""]
    out += ["## A run config's `model:`", "", "What `ris.config.run_config` writes for `ris train`.", ""]
    out += [*_table(MODEL_SETTINGS), ""]
    out += ["## Backbones", "", "The image side (`train.image_size`) must be a multiple of the backbone's stride, so",
            "that every stage halves the map exactly.", "", "| backbone | stride |", "|---|---|"]  # fmt: skip
    out += [f"| `{b}` | {s} |" for b, s in sorted(cat.backbones.items())]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(options_markdown(), end="")
