"""What every method shares: its configuration, the text and image encoders, the stage-wise fusion loop.

A method subclasses :class:`RISModel`, declares its options in ``OPTIONS`` (:class:`ris.options.Option`;
the shared ones are :data:`ris.options.MODEL_OPTIONS`), builds one fusion module per backbone stage and a
head, and returns ``{"logits": (B, 1, h, w), ...}`` from ``forward``; ``loss`` and ``predict`` work on that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ris.models.backbones import load_pretrained_file, recomputed
from ris.models.blocks import MaskHypotheses, PWAMFusion, QueryDecoder, TopDownDecoder
from ris.models.losses import (
    InstanceTargets,
    dice_loss,
    hypothesis_losses,
    pixel_sentence_contrast,
    resize_logits,
    weighted_bce,
)
from ris.models.registry import BACKBONES, TEXT_ENCODERS, lookup
from ris.options import MODEL_OPTIONS, Option, resolve
from ris.utils import reject_unknown_fields


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint."""

    method: str
    backbone: str = "swin_b"
    text_encoder: str = "bert-base-uncased"
    size: str = "tiny"  # "tiny" (demo) or "full" (paper)
    image_size: int = 128
    vocab_size: int = 30522
    num_masks: int = 0
    pretrained_backbone: bool | str = False  # True: timm/hub weights; a path: a pretrained-backbone file
    pretrained_text: str | None = None  # hub id or local folder for from_pretrained
    # the method's options (declared: ris.options.MODEL_OPTIONS and the method's OPTIONS; docs/options.md)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        reject_unknown_fields(cls, d, "model settings")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def external_text(self) -> bool:
        """A frozen pretrained text encoder (option ``freeze_text``): its weights come from
        ``from_pretrained``, not from checkpoints."""
        return bool(self.pretrained_text and self.options.get("freeze_text", False))


class RISModel(nn.Module):
    """Base class: image backbone and text encoder from the registry, fusion loop, loss, prediction."""

    #: The method's own options (the shared :data:`ris.options.MODEL_OPTIONS` aside); :mod:`ris.catalog` reads
    #: this assignment from the source, so it holds literals, ``Option(...)`` and names of :mod:`ris.options`.
    OPTIONS: tuple[Option, ...] = ()

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        #: ``cfg.options`` checked against the declarations and completed with their defaults.
        self.options = resolve(cfg.options, (*MODEL_OPTIONS, *self.OPTIONS), f"{cfg.method} model: field options")
        self.backbone = lookup(BACKBONES, "backbone", cfg.backbone)(
            cfg.size, cfg.image_size, cfg.pretrained_backbone is True, **self.option("backbone_args")
        )
        if isinstance(cfg.pretrained_backbone, str):  # the demo's pretraining job (ris.training.pretrain)
            load_pretrained_file(self.backbone, cfg.pretrained_backbone, cfg.backbone, cfg.size)
        # Option ``freeze_backbone_stages`` k: the stem and first k stages keep their (pretrained) weights.
        self.backbone.freeze(self.option("freeze_backbone_stages"))
        self.text = lookup(TEXT_ENCODERS, "text encoder", cfg.text_encoder)(
            cfg.size, cfg.vocab_size, cfg.pretrained_text
        )
        # speed switch (opt-in, numerically equivalent up to rounding): no NHWC->NCHW copies around fusions
        self.backbone.channels_last_fusion = self.option("channels_last_fusion")
        if self.option("freeze_text"):
            self.text.freeze()
        #: Option ``activation_checkpointing``: while training with gradients, :meth:`encode` keeps only the
        #: inputs of each Swin block and of each stage's fusion and recomputes them in the backward pass
        #: (less memory, one more forward of the encoder); no effect in eval mode or under ``no_grad``.
        self.activation_checkpointing = self.option("activation_checkpointing")
        #: PWAM's language norm (:class:`ris.models.blocks.PixelWordAttention`): "instance" as the official code.
        self.lang_norm = self.option("lang_norm")
        # Option ``word_dim``: a learned linear projection of the word features to that width before any
        # fusion (the demo narrows MiniLM's 384 to 64, which the tiny fusion modules and query decoders then
        # work at); unset, as at paper scale, the fusions see the text encoder's features as they are.
        word_dim = self.option("word_dim")
        self.text_proj = nn.Linear(self.text.dim, int(word_dim)) if word_dim else None
        #: Width of the word features the fusion modules and heads receive.
        self.lang_dim = int(word_dim) if word_dim else self.text.dim

    def option(self, name: str) -> Any:
        """The checked value of a declared option (its default when the run config leaves it out)."""
        if name not in self.options:
            raise KeyError(f"{type(self).__name__} reads option {name!r}, which it does not declare (OPTIONS)")
        return self.options[name]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint stores: all, except those of an external text encoder (the demo's frozen
        MiniLM: 90 MB per run that its package already holds)."""
        state = self.state_dict()
        if self.cfg.external_text:
            state = {k: v for k, v in state.items() if not k.startswith("text.")}
        return state

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`checkpoint_state` stored; every weight but an external text encoder's must be there."""
        if not self.cfg.external_text:
            self.load_state_dict(state)
            return
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("text.")]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint weights do not fit the {self.cfg.method} model: missing {', '.join(missing) or 'none'}; "
                f"unexpected {', '.join(unexpected) or 'none'}"
            )

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Word features (B, L, :attr:`lang_dim`) of the token ids: the text encoder, then ``word_dim``."""
        words, _ = self.text(input_ids, attention_mask)
        return self.project_words(words)

    def project_words(self, words: torch.Tensor) -> torch.Tensor:
        """The option ``word_dim``'s projection of text-encoder word features (identity when unset)."""
        return words if self.text_proj is None else self.text_proj(words)

    def pixel_decoder(self) -> TopDownDecoder:
        """LAVT's top-down decoder over the backbone's stages, every method's pixel decoder; option
        ``decoder_dim`` sets its width (default LAVT's: half the last stage's channels)."""
        return TopDownDecoder(self.backbone.channels, self.option("decoder_dim"))

    def pwam_fusions(self) -> nn.ModuleList:
        """LAVT's encoder fusion, one :class:`PWAMFusion` per backbone stage (options ``fusion_heads``,
        ``fusion_dropout``, ``lang_norm``), shared by every method that fuses language this way (LAVT, EAVL,
        JMCELN)."""
        heads, drop, norm = self.option("fusion_heads"), self.option("fusion_dropout"), self.lang_norm
        return nn.ModuleList(PWAMFusion(c, self.lang_dim, heads, drop, norm) for c in self.backbone.channels)

    def hidden_dim(self) -> int:
        """Width of a method's query/context embeddings: option ``hidden_dim`` (256 at full size, 64 tiny; a
        method that calls this declares :data:`ris.options.HIDDEN_DIM`)."""
        return self.option("hidden_dim") or (256 if self.cfg.size == "full" else 64)

    def build_query_decoder(self, dim: int) -> QueryDecoder:
        """The Mask2Former-style query decoder of every query-based method (CoupAlign's mask generator, EAVL's
        aligner), over the fused maps at strides 8, 16 and 32 (call it with all four maps of :meth:`encode`:
        it takes the coarsest ones); options ``query_layers`` (3), ``heads`` (8), ``ffn_dim`` (8 * dim),
        ``dropout`` (0.0): a method that calls this declares :data:`ris.options.QUERY_DECODER_OPTIONS`."""
        return QueryDecoder(
            self.backbone.channels[1:],
            dim,
            layers=self.option("query_layers"),
            heads=self.option("heads"),
            ffn_dim=self.option("ffn_dim") or 8 * dim,
            dropout=self.option("dropout"),
        )

    def encode(
        self,
        images: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        fusions: nn.ModuleList,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the backbone stage by stage with ``fusions[i]`` after stage ``i``.

        A fusion module maps ``(vis, words, word_mask)`` to ``(vis_next, out, words_next)``: the visual
        map fed to the next stage, the map handed to the decoder, and (possibly updated) words. With
        :attr:`activation_checkpointing`, while training with gradients, the Swin blocks and the fusions
        are recomputed in the backward pass (:func:`ris.models.backbones.recomputed`).
        """
        bb = self.backbone
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = bb.stem(images)
        outs = []
        for stage, fuse in zip(bb.stages, fusions):
            x = bb.run_stage(stage, x, recompute)
            v, out, words = recomputed(fuse, bb.to_nchw(x), words, word_mask, enabled=recompute)
            x = bb.from_nchw(v)
            outs.append(out)
        return outs, words

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def forward_words(self, images: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> dict[str, Any]:
        """The forward pass from word features (B, L, D) and their mask (B, L) instead of token ids.

        What the official LAVT model takes (BERT runs outside it), so outputs can be compared with the
        official code's without a text encoder. Methods that use more than the word features (e.g. a
        sentence feature from the text encoder) do not offer it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no forward from word features")

    def mask_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mask loss every method uses for its mask predictions.

        LAVT's class-weighted cross-entropy (options ``fg_weight`` 1.1, ``bg_weight`` 0.9), plus a Dice
        term when the option ``dice_weight`` > 0 (the demo preset sets it: tiny random-init models on
        small synthetic objects otherwise settle on the all-background prediction for many epochs).
        """
        loss = weighted_bce(logits, target, self.option("fg_weight"), self.option("bg_weight"))
        dice_weight = self.option("dice_weight")
        if dice_weight > 0:
            loss = loss + dice_weight * dice_loss(logits, target)
        return loss

    #: Weights of the mask-hypothesis losses (:func:`ris.models.losses.hypothesis_losses`), which methods with a
    #: :class:`ris.models.blocks.MaskHypotheses` head set from their options ``proposal_weight``, ``selection_weight``.
    proposal_weight: float = 0.0
    selection_weight: float = 0.0

    @property
    def has_mask_hypotheses(self) -> bool:
        """Whether ``forward`` returns N masks, their weights and queries (``masks``, ``mask_weights``, ``queries``:
        :class:`ris.models.blocks.MaskHypotheses`), which ``ris evaluate`` then diagnoses."""
        return any(isinstance(m, MaskHypotheses) for m in self.modules())

    @property
    def uses_instances(self) -> bool:
        """Whether :meth:`loss` needs the image's objects (``instances``: :class:`ris.models.losses.InstanceTargets`);
        training then loads ``instances.parquet`` and passes them."""
        return self.proposal_weight > 0 or self.selection_weight > 0

    def add_pixel_sentence_contrast(
        self, losses: dict[str, torch.Tensor], outputs: dict[str, Any], target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``losses`` plus ``aux_weight`` times the contrast of the outputs' ``pixel_embed`` against their
        ``sentence`` (:func:`ris.models.losses.pixel_sentence_contrast`, options ``aux_weight``, ``temperature``),
        and the term, detached, as ``aux``."""
        aux = pixel_sentence_contrast(outputs["pixel_embed"], outputs["sentence"], target, self.option("temperature"))
        return {**losses, "loss": losses["loss"] + self.option("aux_weight") * aux, "aux": aux.detach()}

    def add_hypothesis_losses(
        self, losses: dict[str, torch.Tensor], outputs: dict[str, Any], instances: InstanceTargets | None
    ) -> dict[str, torch.Tensor]:
        """``losses`` plus the weighted proposal and selection losses of the outputs' mask hypotheses (and the
        two terms, detached, for the logs); unchanged when both weights are 0."""
        if not self.uses_instances:
            return losses
        if instances is None:
            raise ValueError(f"{self.cfg.method}: proposal_weight / selection_weight > 0 need instance targets")
        h = hypothesis_losses(outputs["masks"], outputs["mask_weight_logits"], outputs.get("objectness"), instances)
        total = losses["loss"] + self.proposal_weight * h["proposal"] + self.selection_weight * h["selection"]
        return {**losses, "loss": total, **{k: v.detach() for k, v in h.items()}}

    def loss(self, outputs: dict[str, Any], target: torch.Tensor, instances: Any = None) -> dict[str, torch.Tensor]:
        """Default: the mask loss on the final logits."""
        loss = self.mask_loss(outputs["logits"], target)
        return {"loss": loss, "mask": loss.detach()}

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Boolean masks (B, H, W) at ``size``."""
        return self.predict_outputs(images, input_ids, attention_mask, size)[0]

    def predict_outputs(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`predict`'s masks and the forward's outputs they came from (``ris evaluate`` diagnoses a
        multi-mask model's N masks from the same pass)."""
        out = self(images, input_ids, attention_mask)
        return resize_logits(out["logits"], size).squeeze(1) > 0, out
