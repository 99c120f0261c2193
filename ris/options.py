"""Declared settings: every model option and ``train:`` key with its type, default, range and meaning.

One declaration serves every reader: ``RISModel.option`` returns the checked value, ``ris.config.validate``
checks ``config.yaml`` at every Snakemake start, ``ris train`` checks its run config before it writes
anything (:func:`ris.catalog.check_run_settings`), and ``docs/options.md`` is generated from it. Options every
method reads are declared here (:data:`MODEL_OPTIONS`), with the groups several methods share
(:data:`PWAM_OPTIONS`, :data:`QUERY_DECODER_OPTIONS`, :data:`HIDDEN_DIM`); a method declares its own in its
class (``OPTIONS``, e.g. :class:`ris.models.coupalign.CoupAlign`). No torch here: planning stays fast.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HIDDEN_DIM",
    "HYPOTHESIS_OPTIONS",
    "CONTRAST_OPTIONS",
    "MODEL_OPTIONS",
    "MODEL_SETTINGS",
    "PWAM_OPTIONS",
    "QUERY_DECODER_OPTIONS",
    "REQUIRED",
    "TRAIN_OPTIONS",
    "Option",
    "config_text",
    "OptionError",
    "resolve",
    "unknown_key",
]


class OptionError(ValueError):
    """A setting is unknown, missing, of the wrong type or out of range; the message names where and why."""


class _Required:
    def __repr__(self) -> str:
        return "required"


#: The default of a setting that has none: it must be given.
REQUIRED: Any = _Required()

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}  # fmt: skip


@dataclass(frozen=True)
class Option:
    """One setting: its name, type (bool, int, float, str, list, dict), default, meaning and allowed values.

    ``ge``/``gt``/``le``/``lt`` bound a number (each item of a list, with ``items``); ``choices`` lists the
    only values allowed; ``also`` values accepted besides the typed ones (e.g. ``"auto"``); ``pattern`` a
    regular expression a string must match in full. ``None`` is allowed where the default is ``None``.
    """

    name: str
    type: type
    default: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    also: tuple[Any, ...] = ()
    pattern: str | None = None
    items: type | None = None

    def expected(self) -> str:
        """What a value must be, in words: ``an integer >= 1``, ``one of 'instance', 'none'``, ..."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = _TYPE_NAMES[self.items or self.type]
        if self.items:
            kind = f"a list of {kind.removeprefix('an ').removeprefix('a ')}s"
        bounds = [f"{op} {_num(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if v is not None]  # fmt: skip
        parts = [" ".join([kind, " and ".join(bounds)]).strip() + (f" matching {self.pattern}" if self.pattern else "")]
        parts += [config_text(a) for a in self.also] + (["null"] if self.default is None else [])
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]

    def check(self, value: Any, where: str) -> Any:
        """``value`` if it is allowed, else :class:`OptionError` naming ``where`` and what is expected."""
        if value is None and self.default is None or _same_in(value, self.also):
            return value
        values = value if self.items and isinstance(value, list) else [value]
        kind = self.items or self.type
        if (self.items and not isinstance(value, list)) or not all(self._fits(v, kind) for v in values):
            raise OptionError(f"{where}: expected {self.expected()}, got {config_text(value)}")
        return value

    def _fits(self, v: Any, kind: type) -> bool:
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, kind)
        if not ok or (self.choices is not None and not _same_in(v, self.choices)):
            return False
        if self.pattern and not re.fullmatch(self.pattern, v):
            return False
        return not (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        )


def _same_in(value: Any, allowed: Iterable[Any]) -> bool:
    """``value in allowed`` without True == 1: a boolean matches only a boolean."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def config_text(v: Any) -> str:
    """A value as config files write it (true, null, 'text')."""
    if v is None:
        return "null"
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)


def unknown_key(where: str, key: Any, valid: Iterable[str], what: str = "key") -> str:
    """The message for an unknown ``key`` (a key, a method, ...) found at ``where``: the closest valid name, else
    all of them."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid) or 'none'}"
    return f"{where}: unknown {what} {key!r} ({hint})"


def resolve(
    given: Mapping[str, Any] | None, declared: Iterable[Option], where: str, partial: bool = False
) -> dict[str, Any]:
    """``given`` checked against ``declared`` and completed with its defaults.

    ``where`` names the place for messages (``"config.yaml: field methods.coupalign.options"``). Raises
    :class:`OptionError` on an unknown key (naming the closest valid one), a missing required key, or a
    value of the wrong type or out of range. ``partial``: overrides of another section (no key required,
    no defaults filled in).
    """
    table = {o.name: o for o in declared}
    given = dict(given or {})
    for key in given:
        if key not in table:
            raise OptionError(unknown_key(where, key, table))
    out = {}
    for name, opt in table.items():
        if name in given:
            out[name] = opt.check(given[name], f"{where}.{name}")
        elif partial:
            continue
        elif opt.default is REQUIRED:
            raise OptionError(f"{where}: missing key {name!r} ({opt.help}; expected {opt.expected()})")
        else:
            out[name] = copy.deepcopy(opt.default)
    return out


# ------------------------------------------------------------------------------------ declarations: model

#: The ``model:`` section of a run config: the fields of ``ris.models.base.ModelConfig`` (a test keeps them equal).
MODEL_SETTINGS: tuple[Option, ...] = (
    Option("method", str, REQUIRED, "a registered method (above, with its options)"),
    Option("backbone", str, "swin_b", "a registered backbone"),
    Option("text_encoder", str, "bert-base-uncased", "a registered text encoder"),
    Option(
        "size", str, "tiny", "tiny: the demo's small siblings; full: the paper's networks", choices=("tiny", "full")
    ),
    Option("image_size", int, 128, "input side in pixels (a multiple of the backbone's stride)", ge=32),
    Option("vocab_size", int, 30522, "token ids of the text encoder", ge=1),
    Option("num_masks", int, 0, "N: masks / queries of the query-based methods (CoupAlign: 0 = no SMA)", ge=0),
    Option(
        "pretrained_backbone",
        str,
        False,
        "true: timm/hub weights; a path: a pretrained-backbone file",
        also=(True, False),
    ),  # fmt: skip
    Option("pretrained_text", str, None, "hub id or local folder of a pretrained text encoder"),
    Option("options", dict, {}, "the method's options (above)"),
)

#: Options every method reads (``ris.models.base.RISModel``).
MODEL_OPTIONS: tuple[Option, ...] = (
    Option(
        "backbone_args",
        dict,
        {},
        "overrides of the backbone's architecture (Swin: embed_dim, depths, "
        "num_heads, window_size; set by ris import-checkpoint)",
    ),  # fmt: skip
    Option("freeze_backbone_stages", int, 0, "the stem and the first k backbone stages keep their weights", ge=0, le=4),
    Option("freeze_text", bool, False, "the pretrained text encoder is not trained (its features are cached)"),
    Option("channels_last_fusion", bool, False, "speed switch: no NHWC->NCHW copies around the fusions"),
    Option("activation_checkpointing", bool, False, "recompute Swin blocks and fusions in the backward pass"),
    Option(
        "lang_norm",
        str,
        "instance",
        "PWAM's norm of the attended words (instance: official)",
        choices=("instance", "none"),
    ),  # fmt: skip
    Option("word_dim", int, None, "project the words to this width before any fusion (null: as they are)", ge=1),
    Option("decoder_dim", int, None, "pixel decoder width (null: half the last stage's channels, LAVT's)", ge=1),
    Option("fg_weight", float, 1.1, "weight of foreground pixels in the cross-entropy (LAVT)", ge=0),
    Option("bg_weight", float, 0.9, "weight of background pixels in the cross-entropy (LAVT)", ge=0),
    Option("dice_weight", float, 0.0, "weight of a Dice term added to the mask loss", ge=0),
)

#: LAVT's pixel-word attention and language gate after every stage (``RISModel.pwam_fusions``).
PWAM_OPTIONS: tuple[Option, ...] = (
    Option("fusion_heads", int, 1, "attention heads of each stage's pixel-word attention (LAVT: 1)", ge=1),
    Option("fusion_dropout", float, 0.0, "dropout in the pixel-word attention (LAVT: 0)", ge=0, lt=1),
)

#: Width of the query / context embeddings (``RISModel.hidden_dim``).
HIDDEN_DIM = Option("hidden_dim", int, None, "width of the query/context embeddings (null: 256 full, 64 tiny)", ge=1)

#: The Mask2Former-style query decoder (``RISModel.build_query_decoder``).
QUERY_DECODER_OPTIONS: tuple[Option, ...] = (
    Option("query_layers", int, 3, "layers of the query decoder", ge=1),
    Option("heads", int, 8, "attention heads of the query decoder", ge=1),
    Option("ffn_dim", int, None, "feed-forward width of the query decoder (null: 8 x hidden_dim)", ge=1),
    Option("dropout", float, 0.0, "dropout in the query decoder", ge=0, lt=1),
)

#: The losses that make N masks N object hypotheses (``ris.models.losses.hypothesis_losses``; weights chosen on
#: the demo over 3 seeds, docs/masks.md).
HYPOTHESIS_OPTIONS: tuple[Option, ...] = (
    Option("proposal_weight", float, 1.0, "weight of the masks' matching to the image's objects", ge=0),
    Option("selection_weight", float, 0.1, "weight of the sentence picking the referred object's mask", ge=0),
)

#: CoupAlign's auxiliary loss contrasting foreground and background pixels against the sentence
#: (``ris.models.losses.pixel_sentence_contrast``); also what a mask's pixels are scored against the sentence by.
CONTRAST_OPTIONS: tuple[Option, ...] = (
    Option("aux_weight", float, 1.0, "weight of the pixel-sentence contrastive loss", ge=0),
    Option("temperature", float, 0.1, "temperature of the pixel-sentence contrast and of the masks' scores", gt=0),
)

# ------------------------------------------------------------------------------------ declarations: train

#: The ``train:`` keys (``scales.<scale>.train``, ``methods.<m>.train``, a run config's ``train``).
TRAIN_OPTIONS: tuple[Option, ...] = (
    Option("image_size", int, REQUIRED, "input side in pixels (a multiple of the backbone's stride)", ge=32),
    Option("max_tokens", int, REQUIRED, "tokens per sentence, padded or cut", ge=2),
    Option("epochs", int, REQUIRED, "passes over the train split", ge=1),
    Option("batch_size", int, REQUIRED, "global batch of one optimizer step, whatever the processes", ge=1),
    Option("lr", float, REQUIRED, "AdamW learning rate (poly decay)", gt=0),
    Option("weight_decay", float, REQUIRED, "AdamW weight decay", ge=0),
    Option(
        "optimizer",
        str,
        "adamw",
        "adamw: one group; lavt_official: LAVT train.py's groups",
        choices=("adamw", "lavt_official"),
    ),  # fmt: skip
    Option("poly_power", float, 0.9, "power of the poly learning-rate decay", ge=0),
    Option("num_workers", int, 0, "DataLoader processes", ge=0),
    Option("max_steps_per_epoch", int, None, "cap on the optimizer steps of an epoch (null: the whole split)", ge=1),
    Option("grad_clip", float, None, "clip the gradient norm to this (null: no clipping)", gt=0),
    Option("ema_decay", float, None, "EMA of the weights, used for validation and model.pt (null: off)", ge=0, lt=1),
    Option("device", str, "auto", "auto: CUDA when present, else the CPU", pattern=r"auto|cpu|cuda(:[0-9]+)?"),
    Option(
        "precision",
        str,
        "auto",
        "auto: bf16 on CUDA, fp32 on the CPU; fp16 adds a grad scaler",
        choices=("auto", "bf16", "fp16", "fp32"),
    ),  # fmt: skip
    Option("channels_last", bool, False, "NHWC memory format for the image path"),
    Option("gpus", int, 0, "GPUs per training job (the rule's gpu resource); > 1: DDP under torchrun", ge=0),
    Option(
        "micro_batch_size",
        int,
        None,
        "most items per forward and process (null: the process's share; auto: halved on out-of-memory)",
        ge=1,
        also=("auto",),
    ),  # fmt: skip
    Option("sync_batchnorm", bool, False, "SyncBatchNorm across GPUs (CUDA DDP only)"),
    Option("checkpoint_every_steps", int, None, "also write work/last.pt every K steps (0 or null: per epoch)", ge=0),
    Option("val_every_epochs", int, 1, "validate (pick the best checkpoint) every K epochs and after the last", ge=1),
    Option("log_every_steps", int, None, "step loss to the log and MLflow every K steps (0 or null: off)", ge=0),
    Option("keep_work", bool, False, "keep work/ (last.pt, best.pt) once model.pt is published"),
)
