"""timm image backbones exposed stage by stage, so language fusion can run after every stage.

Every backbone is split into a ``stem`` and four ``stages`` with output strides 4, 8, 16 and 32. Swin
stages work on NHWC tensors and CNN stages on NCHW; :class:`StagedBackbone` converts at the boundary so
fusion modules always see NCHW. timm's Swin puts patch merging at the *start* of each stage, so fusing
after stage ``i`` and feeding the result to stage ``i + 1`` is exactly LAVT's order (fuse, then
downsample).

Each registered name has two sizes: ``full`` (the paper's network, ImageNet weights when
``pretrained``) and ``tiny`` (a small sibling of the same family, random init, for CPU demos).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    SwinTransformerStage,
    window_partition,
    window_reverse,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from ris.models.registry import register_backbone


def recomputed(fn: Callable[..., Any], *args: Any, enabled: bool = True) -> Any:
    """``fn(*args)``; when ``enabled``, its activations are not kept but recomputed in the backward pass.

    The activation-checkpointing mechanism of every method (option ``activation_checkpointing``): PyTorch's
    non-reentrant checkpoint, which restores the RNG state for the recomputation, so dropout and drop-path
    draw the same masks twice and gradients equal those without it.
    """
    return checkpoint(fn, *args, use_reentrant=False) if enabled else fn(*args)


class StagedBackbone(nn.Module):
    """A stem and four stages; ``channels[i]`` is the width of stage ``i``'s output."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int], nhwc: bool):
        super().__init__()
        if len(stages) != 4 or len(channels) != 4:
            raise ValueError("a staged backbone needs exactly four stages (strides 4, 8, 16, 32)")
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.nhwc = nhwc
        #: NHWC stages hand fusion modules a channels_last view instead of a copy (:meth:`to_nchw`); opt-in.
        self.channels_last_fusion = False
        #: Parts kept frozen by :meth:`freeze` (no gradients, BatchNorm statistics fixed in train mode too).
        self.frozen: list[nn.Module] = []

    def freeze(self, stages: int) -> None:
        """Freeze the stem and the first ``stages`` stages (0: nothing; 4: the whole backbone).

        Their weights get no gradient and their normalisation layers stay in eval mode, so a pretrained
        early backbone (the demo's, :mod:`ris.training.pretrain`) is kept as it is while the rest adapts;
        no backward pass runs through a frozen prefix.
        """
        if not 0 <= int(stages) <= len(self.stages):
            raise ValueError(f"model option freeze_backbone_stages must be in [0, {len(self.stages)}], got {stages}")
        self.frozen = [self.stem, *self.stages[: int(stages)]] if int(stages) else []
        for part in self.frozen:
            part.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> StagedBackbone:
        """``nn.Module.train``, except that frozen parts stay in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        for part in getattr(self, "frozen", []):
            part.eval()
        return self

    def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """An NHWC stage output as NCHW: a contiguous copy, or with :attr:`channels_last_fusion` a
        channels_last view (1x1 convs, norms and elementwise ops take it as it is and their outputs stay
        channels_last, so :meth:`from_nchw` copies nothing either). Opt-in: oneDNN's channels_last kernels
        round differently (official LAVT outputs matched within 4e-5 instead of 2.2e-5, but one 1/4-size
        argmax pixel of the interop fixture flips)."""
        if not self.nhwc:
            return x
        x = x.permute(0, 3, 1, 2)
        return x if self.channels_last_fusion else x.contiguous()

    def from_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """An NCHW map back to NHWC for the next Swin stage; ``contiguous`` copies only a non-channels_last map."""
        return x.permute(0, 2, 3, 1).contiguous() if self.nhwc else x

    @staticmethod
    def run_stage(stage: nn.Module, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """One stage's output. With ``recompute`` a Swin stage runs its patch merging and then each of its
        blocks under :func:`recomputed` (as timm's ``SwinTransformerStage.forward`` runs them), so only
        the blocks' inputs stay in memory until the backward pass. CNN stages always run as they are:
        recomputing their BatchNorm layers would update the running statistics a second time."""
        if not recompute or not isinstance(stage, SwinTransformerStage):
            return stage(x)
        x = recomputed(stage.downsample, x, enabled=not isinstance(stage.downsample, nn.Identity))
        for block in stage.blocks:
            x = recomputed(block, x)
        return x

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Plain (language-free) features of the four stages, NCHW."""
        x = self.stem(images)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(self.to_nchw(x))
        return outs


#: ``format`` field of a pretrained-backbone file (written by :mod:`ris.training.pretrain`).
PRETRAINED_FORMAT = "ris-pretrained-backbone"


def load_pretrained_file(backbone: StagedBackbone, path: str, family: str, size: str) -> dict[str, Any]:
    """Load a pretrained-backbone file into ``backbone``; returns its header (without the weights).

    The file is the demo's ImageNet (``results/pretrained/<family>.pt``): its ``family`` and ``size`` must be
    those of the model's backbone, else a ValueError names the file and the field.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: pretrained backbone file not found (field pretrained_backbone)") from None
    if not isinstance(data, dict) or data.get("format") != PRETRAINED_FORMAT or "state_dict" not in data:
        raise ValueError(f"{path}: not a pretrained backbone file (expected format {PRETRAINED_FORMAT!r})")
    for name, want in (("family", family), ("size", size)):
        if data.get(name) != want:
            raise ValueError(f"{path}: field {name} is {data.get(name)!r}, but the model's backbone {name} is {want!r}")
    try:
        backbone.load_state_dict(data["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: field state_dict does not fit the {size} {family} backbone ({e})") from None
    return {k: v for k, v in data.items() if k != "state_dict"}


def _check_size(size: str) -> None:
    if size not in ("tiny", "full"):
        raise ValueError(f"backbone size must be 'tiny' or 'full', got {size!r}")


class OfficialSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the official Swin (segmentation) window order: pad, *then* shift.

    The official Swin of LAVT (``Swin-Transformer-Semantic-Segmentation``, LAVT's ``lib/backbone.py``) pads
    a map to a multiple of the window, applies the cyclic shift to the padded map, and builds the
    shifted-window mask on the padded grid. timm 1.x shifts the unpadded map, then pads. The two agree
    when the map is a multiple of the window (30x30, 24x24 with window 12) and differ otherwise (15x15 =
    stage 4 at 480 px; every stage at 448 px). Weights, modules and the relative-position tables are
    timm's unchanged, so timm's ImageNet checkpoints load as they are; only ``_attn`` differs. Blocks are
    built with timm's ``always_partition`` (the window is never shrunk to a small map, and odd blocks always
    shift by half a window: official semantics, where timm would use a smaller window without shift) and
    ``dynamic_mask`` (the mask is built per forward from the padded size, so any input size works).
    Patch merging needs no change: timm pads an odd map at the bottom/right and concatenates the 2x2
    neighbours in the official order; :func:`official_swin` adds the official patch-embedding padding.
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, c = x.shape
        wh, ww = self.window_size
        pad_w, pad_h = (ww - w % ww) % ww, (wh - h % wh) % wh
        if pad_w or pad_h:  # F.pad copies the map even when there is nothing to pad
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = x.shape[1], x.shape[2]
        shift = tuple(self.shift_size)
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = self.get_attn_mask(x)  # on the padded grid, as the official BasicLayer builds it
        windows = window_partition(x, self.window_size).view(-1, self.window_area, c)
        windows = self.attn(windows, mask=mask).view(-1, wh, ww, c)
        x = window_reverse(windows, self.window_size, hp, wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :h, :w, :].contiguous() if pad_w or pad_h else x


def official_swin(model: SwinTransformer) -> SwinTransformer:
    """Give every block of a timm Swin the official window semantics (:class:`OfficialSwinBlock`), in place.

    Also pads the image to a multiple of the patch size (right/bottom) as the official ``PatchEmbed``
    does, instead of refusing such sizes.
    """
    model.patch_embed.dynamic_img_pad = True
    for block in model.modules():
        if isinstance(block, SwinTransformerBlock):
            block.__class__ = OfficialSwinBlock
    return model


#: timm Swin settings of our two sizes: ``full`` is LAVT's Swin-B (window 12, stochastic depth 0.3, its
#: ``segmentation.py``); ``tiny`` a small sibling without stochastic depth.
SWIN_SIZES: dict[str, dict[str, Any]] = {
    "full": {"window_size": 12, "drop_path_rate": 0.3},
    "tiny": {"window_size": 4, "embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8)},
}


@register_backbone("swin_b", stride=32)
def swin_b(size: str, image_size: int, pretrained: bool = False, **arch: Any) -> StagedBackbone:
    """Swin-B with the official (LAVT) window semantics (:class:`OfficialSwinBlock`); see :data:`SWIN_SIZES`.

    ``arch`` (``embed_dim``, ``depths``, ``num_heads``, ``window_size``) overrides the size's architecture,
    e.g. to rebuild an imported checkpoint of another Swin; ImageNet weights only load for the full size:
    ``swin_base_patch4_window12_384_22k.pth``, the file LAVT's README starts from (timm tag ``ms_in22k``).
    """
    _check_size(size)
    kw = {**SWIN_SIZES[size], **arch}
    m = timm.create_model(
        "swin_base_patch4_window12_384.ms_in22k",  # LAVT's weights: ImageNet-22k, no 1k fine-tuning
        pretrained=pretrained and size == "full",
        num_classes=0,  # no classifier head (nor its ImageNet weights)
        img_size=image_size,
        always_partition=True,
        strict_img_size=False,
        **kw,
    )
    official_swin(m)
    channels = [int(m.embed_dim * 2**i) for i in range(4)]
    return StagedBackbone(m.patch_embed, list(m.layers), channels, nhwc=True)


@register_backbone("resnet101", stride=32)
def resnet101(size: str, image_size: int, pretrained: bool = False) -> StagedBackbone:
    """ResNet-101 (CoupAlign supplementary Table 1); tiny: ResNet-10-T (one block per stage) at half width."""
    _check_size(size)
    if size == "full":
        m = timm.create_model("resnet101", pretrained=pretrained)
    else:
        m = timm.create_model("resnet10t", channels=(32, 64, 128, 256), stem_width=16)
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [m.layer1, m.layer2, m.layer3, m.layer4]
    channels = [int(m.feature_info[i]["num_chs"]) for i in range(1, 5)]
    return StagedBackbone(stem, stages, channels, nhwc=False)


@register_backbone("darknet53", stride=32)
def darknet53(size: str, image_size: int, pretrained: bool = False) -> StagedBackbone:
    """Darknet-53 (YOLOv3's backbone, CoupAlign Table 2); tiny: Darknet-17 at a quarter of the width.

    timm's Darknet has a stride-1 stem and five stride-2 stages: its stem and ``stages[0]`` form our
    stem (stride 2), and ``stages[1:5]`` are the four fused stages (strides 4 to 32).
    """
    _check_size(size)
    if size == "full":
        m = timm.create_model("darknet53", pretrained=pretrained)
    else:
        from timm.models import cspnet

        cfg = cspnet.model_cfgs["darknet17"]
        cfg = replace(
            cfg,
            stem=replace(cfg.stem, out_chs=16),
            stages=replace(cfg.stages, out_chs=tuple(c // 4 for c in cfg.stages.out_chs)),
        )
        m = cspnet.CspNet(cfg)
    stem = nn.Sequential(m.stem, m.stages[0])
    stages = [m.stages[i] for i in range(1, 5)]
    channels = [int(m.feature_info[i]["num_chs"]) for i in range(2, 6)]
    return StagedBackbone(stem, stages, channels, nhwc=False)
