"""Building blocks shared by the methods: attention, language fusion, gates, the pixel decoder.

Methods combine these; none of them is re-implemented inside a method module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
    masked_bias: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention of q (B, N, C) over k, v (B, L, C); ``key_mask`` (B, L) marks real keys.

    ``scale`` replaces the per-head 1/sqrt(C / heads); with ``masked_bias`` the masked keys get that value
    added to their similarity instead of being excluded (LAVT's PWAM adds -1e4).
    """
    b, n, c = q.shape
    ell = k.shape[1]
    if c % heads:
        raise ValueError(f"attention width {c} is not divisible by {heads} heads")
    qh = q.view(b, n, heads, c // heads).transpose(1, 2)
    kh = k.reshape(b, ell, heads, c // heads).transpose(1, 2)
    vh = v.reshape(b, ell, heads, v.shape[-1] // heads).transpose(1, 2)
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    if mask is not None and masked_bias is not None:
        mask = (~mask).to(q.dtype) * masked_bias
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, n, v.shape[-1])


def flatten_hw(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def unflatten_hw(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(dim)`` (no affine, no running statistics) computed on the map's (B, C, H*W) view,
    as the official LAVT's ``InstanceNorm1d``: the same values, and the right gradient where torch's 4D CPU
    kernel gives a wrong one (torch 2.14.1: batch 1 with the output's gradient in channels_last strides, as
    PWAM's query receives it from the attention; ``tests/test_pwam_gradients.py``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x.flatten(2), eps=self.eps).view_as(x)


class CrossAttention(nn.Module):
    """Multi-head cross-attention with input/output projections and a residual-free output."""

    def __init__(self, q_dim: int, kv_dim: int, dim: int, heads: int = 1, out_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(q_dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, out_dim or q_dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(attend(self.q(q), self.k(kv), self.v(kv), self.heads, kv_mask))


class PixelWordAttention(nn.Module):
    """LAVT's pixel-word attention module (PWAM): every pixel gathers the words it attends to.

    Pixels are queries (1x1 projection + instance norm), words are keys and values; the attended
    language feature (projection + instance norm) multiplies a projection of the visual feature
    element-wise, and a final 1x1 projection gives the multimodal feature (LAVT paper, Sec. 3.2).
    As the official ``SpatialImageLanguageAttention``: keys and values of padded words are zeroed and their
    similarities get -1e4, and similarities are scaled by 1/sqrt(vis_dim) whatever the number of heads.

    ``lang_norm``: ``"instance"`` (official) or ``"none"``. The instance norm of the attended language
    map subtracts its spatial mean per channel: what every pixel receives from the sentence alike (all of
    it while attention is still near uniform, as at random init) is removed, and only where attention
    differs across pixels survives. Measured on the demo (random-init Swin, frozen MiniLM, 300 steps):
    referring accuracy 50% (chance) with it, 79% without it. The demo preset drops it; paper scale keeps
    the official module. With ``"none"`` the layer is an ``nn.Identity``, so parameter names do not change.
    """

    def __init__(self, vis_dim: int, lang_dim: int, heads: int = 1, dropout: float = 0.0, lang_norm: str = "instance"):
        super().__init__()
        if lang_norm not in ("instance", "none"):
            raise ValueError(f"lang_norm must be 'instance' or 'none', got {lang_norm!r}")
        self.heads = heads
        self.vis_proj = nn.Sequential(nn.Conv2d(vis_dim, vis_dim, 1), nn.GELU(), nn.Dropout(dropout))
        self.query = nn.Sequential(nn.Conv2d(vis_dim, vis_dim, 1), InstanceNorm(vis_dim))
        self.key = nn.Linear(lang_dim, vis_dim)
        self.value = nn.Linear(lang_dim, vis_dim)
        norm = InstanceNorm(vis_dim) if lang_norm == "instance" else nn.Identity()
        self.lang_out = nn.Sequential(nn.Conv2d(vis_dim, vis_dim, 1), norm)
        self.mm_proj = nn.Sequential(nn.Conv2d(vis_dim, vis_dim, 1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, vis: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        hw = vis.shape[-2:]
        m = word_mask.unsqueeze(-1).to(words.dtype)
        q = flatten_hw(self.query(vis))
        k, v = self.key(words) * m, self.value(words) * m
        lang = attend(q, k, v, self.heads, word_mask, scale=q.shape[-1] ** -0.5, masked_bias=-1e4)
        lang = self.lang_out(unflatten_hw(lang, hw))
        return self.mm_proj(self.vis_proj(vis) * lang)


class LanguageGate(nn.Module):
    """LAVT's language gate: a per-pixel, per-channel weight in (-1, 1) for the multimodal residual.

    Two bias-free 1x1 layers (ReLU, then tanh) on the multimodal map; returns ``vis + gate(mm) * mm``
    (LAVT paper, Sec. 3.3). Initialisation: the official ``backbone.py`` zeroes both layers, but
    ``MultiModalSwinTransformer.init_weights`` (always called by ``segmentation.py``) then re-initialises
    every ``nn.Linear``, the gates included, with a truncated normal (std 0.02). We use that effective
    initialisation: with both layers at zero the gate would receive no gradient and stay closed forever.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv2d(dim, dim, 1, bias=False), nn.ReLU(), nn.Conv2d(dim, dim, 1, bias=False), nn.Tanh()
        )
        nn.init.trunc_normal_(self.gate[0].weight, std=0.02)
        nn.init.trunc_normal_(self.gate[2].weight, std=0.02)

    def forward(self, vis: torch.Tensor, mm: torch.Tensor) -> torch.Tensor:
        return vis + self.gate(mm) * mm


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (the per-stage output norm of Swin/LAVT).

    The output keeps the input's memory format: a contiguous map gives a contiguous one, as the official
    LAVT's ``permute(...).contiguous()``. The norm's own output is channels_last, and handing that on would
    run the whole decoder in channels_last, whose forward + backward costs ~12% more CPU time on the CPUs
    measured (docs/performance.md); a channels_last input (CUDA, ``channels_last_fusion``) stays as it is.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


class PWAMFusion(nn.Module):
    """One LAVT stage fusion: PWAM, the language gate, and the output norm."""

    def __init__(self, vis_dim: int, lang_dim: int, heads: int = 1, dropout: float = 0.0, lang_norm: str = "instance"):
        super().__init__()
        self.pwam = PixelWordAttention(vis_dim, lang_dim, heads, dropout, lang_norm)
        self.gate = LanguageGate(vis_dim)
        self.norm = ChannelNorm(vis_dim)

    def forward(
        self, vis: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mm = self.pwam(vis, words, word_mask)
        return self.gate(vis, mm), self.norm(mm), words


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TopDownDecoder(nn.Module):
    """LAVT's top-down pixel decoder over the four fused maps (strides 32 -> 4).

    At each step the coarser map is upsampled bilinearly, concatenated with the next finer map and
    passed through two 3x3 conv-BN-ReLU layers; the result is a (B, hidden, H/4, W/4) feature map.
    LAVT uses ``hidden = channels[3] // 2``.
    """

    def __init__(self, channels: list[int], hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels[3] // 2
        self.hidden = hidden
        self.fuse = nn.ModuleList()
        prev = channels[3]
        for c in reversed(channels[:3]):
            self.fuse.append(nn.Sequential(conv_bn_relu(prev + c, hidden), conv_bn_relu(hidden, hidden)))
            prev = hidden

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[3]
        for block, skip in zip(self.fuse, reversed(feats[:3])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = block(torch.cat([x, skip], dim=1))
        return x


# ---------------------------------------------------------------------------------------------------------
# Query-based blocks (CoupAlign's mask generator, EAVL's aligner, JMCELN's stages).
# ---------------------------------------------------------------------------------------------------------


def masked_mean(words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real words: (B, L, D) with a (B, L) mask -> (B, D)."""
    m = word_mask.unsqueeze(-1).to(words.dtype)
    return (words * m).sum(1) / m.sum(1).clamp(min=1.0)


def sine_position_2d(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """DETR's fixed sine/cosine position code of an h x w grid, (h*w, dim); half the channels code y."""
    if dim % 4:
        raise ValueError(f"sine position width {dim} is not divisible by 4")
    quarter = dim // 4
    freq = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * torch.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * torch.pi

    def code(t: torch.Tensor) -> torch.Tensor:
        a = t[:, None] * freq[None, :]
        return torch.cat([a.sin(), a.cos()], dim=1)

    cy, cx = code(ys), code(xs)
    pos = torch.cat([cy[:, None, :].expand(h, w, -1), cx[None, :, :].expand(h, w, -1)], dim=-1)
    return pos.reshape(h * w, dim).to(dtype)


class MLP(nn.Module):
    """``layers`` linear layers with ReLU between them (one layer: a plain linear map)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError("an MLP needs at least one layer")
        dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.ReLU())
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionLayer(nn.Module):
    """Residual (post-norm) attention sub-layer of a transformer decoder, for self- or cross-attention.

    ``x`` (B, N, dim) attends to ``mem`` (B, M, kv_dim); positions, when given, are added to the queries
    and keys but not to the values (DETR/Mask2Former). Returns ``LayerNorm(x + dropout(attn))``.
    """

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.0, kv_dim: int | None = None):
        super().__init__()
        self.attn = CrossAttention(dim, kv_dim or dim, dim, heads)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        mem: torch.Tensor,
        x_pos: torch.Tensor | None = None,
        mem_pos: torch.Tensor | None = None,
        mem_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        a = self.attn
        q = a.q(x if x_pos is None else x + x_pos)
        k = a.k(mem if mem_pos is None else mem + mem_pos)
        out = a.out(attend(q, k, a.v(mem), a.heads, mem_mask))
        return self.norm(x + self.drop(out))


class FeedForwardLayer(nn.Module):
    """Residual (post-norm) feed-forward sub-layer: ``LayerNorm(x + W2 dropout(ReLU(W1 x)))``."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.ffn(x))


class QueryDecoderLayer(nn.Module):
    """One Mask2Former-style decoder layer: queries cross-attend to a memory, then self-attend, then FFN."""

    def __init__(self, dim: int, heads: int = 8, ffn_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.cross = AttentionLayer(dim, heads, dropout)
        self.self_attn = AttentionLayer(dim, heads, dropout)
        self.ffn = FeedForwardLayer(dim, ffn_dim or 8 * dim, dropout)

    def forward(
        self,
        queries: torch.Tensor,
        mem: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        mem_pos: torch.Tensor | None = None,
        mem_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.cross(queries, mem, query_pos, mem_pos, mem_mask)
        x = self.self_attn(x, x, query_pos, query_pos)
        return self.ffn(x)


class QueryDecoder(nn.Module):
    """A stack of :class:`QueryDecoderLayer` over multi-scale maps, visited round robin, coarsest first.

    Each map (fine to coarse in ``in_channels`` order) is projected to ``dim`` by a 1x1 conv and gets a
    learned level embedding; keys get a sine position code. Layer ``i`` attends to level ``i mod levels``
    (Mask2Former, without its masked attention). Only the ``min(layers, len(in_channels))`` coarsest maps
    are used, so every parameter takes part. Returns LayerNorm-ed queries (B, N, dim).
    """

    def __init__(
        self,
        in_channels: list[int],
        dim: int,
        layers: int = 3,
        heads: int = 8,
        ffn_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError("a query decoder needs at least one layer")
        self.levels = min(layers, len(in_channels))
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels[len(in_channels) - self.levels :])
        self.level_embed = nn.Parameter(torch.randn(self.levels, dim) * 0.02)
        self.layers = nn.ModuleList(QueryDecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, queries: torch.Tensor, feats: list[torch.Tensor], query_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        feats = feats[len(feats) - self.levels :]
        mems = []
        for i, (f, proj) in enumerate(zip(feats, self.proj, strict=True)):
            m = flatten_hw(proj(f)) + self.level_embed[i]
            pos = sine_position_2d(f.shape[-2], f.shape[-1], m.shape[-1], m.device, m.dtype)
            mems.append((m, pos.unsqueeze(0)))
        mems.reverse()
        for i, layer in enumerate(self.layers):
            mem, pos = mems[i % self.levels]
            queries = layer(queries, mem, query_pos, pos)
        return self.norm(queries)


class DynamicMaskHead(nn.Module):
    """Query embeddings become 1x1 convolution kernels over a pixel map: one mask logit map per query.

    A kernel generator (``layers``-layer MLP; one layer = a linear map) turns each query (B, N, q_dim)
    into a weight vector over the ``pixel_dim`` channels (and a bias when ``bias``); the masks are
    ``einsum(kernel, pixels)``, i.e. the dot product of a mask embedding with every pixel embedding
    (MaskFormer/Mask2Former) or a per-query dynamic 1x1 convolution (EAVL). Returns (B, N, h, w).
    The dot product is divided by ``sqrt(pixel_dim)`` (our choice, as in scaled dot-product attention):
    with a default-initialised generator the initial logits then have the spread of a plain 1x1 conv
    classifier instead of growing with the width; the bias output starts at zero for every query.
    """

    def __init__(self, q_dim: int, pixel_dim: int, layers: int = 1, bias: bool = True, hidden: int | None = None):
        super().__init__()
        self.pixel_dim = pixel_dim
        self.bias = bias
        self.kernel = MLP(q_dim, hidden or q_dim, pixel_dim + int(bias), layers)
        if bias:
            last = self.kernel.net[-1]
            with torch.no_grad():
                last.weight[pixel_dim:].zero_()
                last.bias[pixel_dim:].zero_()

    def forward(self, queries: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        k = self.kernel(queries)
        masks = torch.einsum("bnc,bchw->bnhw", k[..., : self.pixel_dim], pixels) / self.pixel_dim**0.5
        if self.bias:
            masks = masks + k[..., self.pixel_dim :, None]
        return masks


def weighted_mask_sum(masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Aggregate per-query mask logits (B, N, h, w) with weights (B, N) into (B, 1, h, w)."""
    return torch.einsum("bnhw,bn->bhw", masks, weights).unsqueeze(1)


class MaskHypotheses(nn.Module):
    """N query embeddings -> N masks, how much each is an object, and the weights the prediction sums them with.

    The head that CoupAlign (sentence-mask alignment), EAVL (multi-mask generator + multi-query estimator) and
    JMCELN (contextual masks) share. Masks: a :class:`DynamicMaskHead` over the pixel map. Weight logits, by
    ``score``:

    * ``"query"``: the scaled dot product of each query with a sentence embedding;
    * ``"pixels"``: the cosine similarity of each mask's pixels (the pixel map averaged under the mask's
      sigmoid) with the sentence embedding, divided by ``temperature``: the sentence weighs what the mask covers;
    * ``"estimator"``: ``scorer(query)``, a learned score of the query alone (EAVL's estimator).

    Weights = softmax over the N; prediction = the weighted sum of the mask logits (:func:`weighted_mask_sum`);
    and one objectness logit per mask (a linear map of its query), which
    :func:`ris.models.losses.hypothesis_losses` trains with the masks' matching to the image's objects.
    """

    SCORES = ("query", "pixels", "estimator")

    def __init__(
        self,
        q_dim: int,
        pixel_dim: int,
        mask_layers: int = 1,
        bias: bool = True,
        score: str = "query",
        temperature: float = 0.1,
        scorer: nn.Module | None = None,
    ):
        super().__init__()
        if score not in self.SCORES or (score == "estimator") != (scorer is not None):
            raise ValueError(f"score must be one of {self.SCORES} (a scorer module with 'estimator' only): {score!r}")
        self.mask_head = DynamicMaskHead(q_dim, pixel_dim, layers=mask_layers, bias=bias)
        self.score, self.temperature, self.scorer = score, temperature, scorer
        self.objectness: nn.Linear | None = nn.Linear(q_dim, 1)

    def forward(
        self, queries: torch.Tensor, pixels: torch.Tensor, sentence: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``logits`` (B, 1, h, w), ``masks`` (B, N, h, w), ``mask_weights`` and ``mask_weight_logits``
        (B, N), ``objectness`` (B, N) and the ``queries`` (B, N, D) themselves."""
        masks = self.mask_head(queries, pixels)
        if self.score != "estimator" and sentence is None:
            raise ValueError(f"MaskHypotheses with score {self.score!r} weighs the masks by a sentence embedding")
        if self.score == "pixels":
            prob = masks.sigmoid()
            pooled = torch.einsum("bnhw,bchw->bnc", prob, pixels) / (prob.sum((2, 3))[..., None] + 1e-6)
            scores = torch.einsum("bnc,bc->bn", F.normalize(pooled, dim=-1), F.normalize(sentence, dim=-1))
            scores = scores / self.temperature
        elif self.score == "query":
            scores = torch.einsum("bnd,bd->bn", queries, sentence) / queries.shape[-1] ** 0.5
        else:
            scores = self.scorer(queries).squeeze(-1)
        weights = torch.softmax(scores, dim=1)
        return {
            "logits": weighted_mask_sum(masks, weights),
            "masks": masks,
            "mask_weights": weights,
            "mask_weight_logits": scores,
            **({} if self.objectness is None else {"objectness": self.objectness(queries).squeeze(-1)}),
            "queries": queries,
        }


def mask_pool(feats: torch.Tensor, prob: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Average of (B, C, h, w) features weighted by a (B, 1, h, w) soft mask (plain average when None)."""
    if prob is None:
        return feats.mean(dim=(2, 3))
    return (feats * prob).sum(dim=(2, 3)) / (prob.sum(dim=(2, 3)) + eps)
