"""Polarized self-attention (Liu et al., "Polarized Self-Attention: Towards High-quality
Pixel-wise Regression", arXiv 2107.00782).

Channel-only branch (paper Eq. 1): A^ch = σ(LN(W_z((σ₁(W_v X)) × F_SM(σ₂(W_q X))))):
W_q is a 1×1 conv C → 1 whose map is softmaxed over the N = H·W positions (F_SM), W_v a 1×1
conv C → C/2; their product pools W_v X into one C/2 vector, W_z (1×1 conv C/2 → C) and a
LayerNorm over the C values follow, then the sigmoid. Z^ch = A^ch ⊙ X (per channel).
Spatial-only branch (Eq. 3): A^sp = σ(σ₃(F_SM(σ₁(F_GP(W_q X)))) × σ₂(W_v X)): W_q and W_v
are 1×1 convs C → C/2; W_q X is globally average pooled (F_GP) and softmaxed over its C/2
channels, then multiplies W_v X at every position, giving one value per position; sigmoid.
Z^sp = A^sp ⊙ X (per position).
Layouts: ``"parallel"`` PSA_p = Z^ch + Z^sp; ``"sequential"`` PSA_s = Z^sp(Z^ch(X)).

The authors' released code (the one given with their segmentation models) differs from the
paper, and its two layouts differ from each other; ``preset`` chooses:

===========  ================================  ============================================
preset       channel branch after W_v·softmax  spatial branch
===========  ================================  ============================================
"paper"      W_z (C/2→C) → LayerNorm → σ        softmax over channels of GAP(W_q X), × W_v X
"official"   parallel: W_z only → σ;            parallel: softmax over positions of
             sequential: conv C/2→C/8 → LN →    GAP(W_q X)·W_v X; sequential: softmax over
             ReLU → conv C/8→C → σ              positions of each channel of W_v X
===========  ================================  ============================================

All convs of W_q and W_v are bias-free (authors' code; the paper does not say); W_z is
bias-free in the ``"paper"`` and parallel official forms, the sequential official bottleneck
has biases. ``"paper"`` is the default: the two released layouts disagree with each other on
both branches, so the paper's equations are the only definition the two layouts share; the
released forms stay available for reproducing the released models. The branch options
(``channel_transform``, ``spatial_softmax``) override the preset.

Observable maps: ``channel_map`` (kind ``"channel"``, A^ch as B×C×1×1) and ``spatial_map``
(kind ``"spatial"``, A^sp as B×1×H×W).

Example:
    >>> import torch
    >>> from attnlab.layers import PolarizedSelfAttention
    >>> psa = PolarizedSelfAttention(64, layout="sequential")
    >>> psa(torch.randn(2, 64, 10, 6)).shape
    torch.Size([2, 64, 10, 6])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, reduced_channels
from .maps import MapTap

PSA_LAYOUTS = ("parallel", "sequential")
PSA_PRESETS = ("paper", "official")
CHANNEL_TRANSFORMS = ("layernorm", "plain", "bottleneck")
SPATIAL_SOFTMAX = ("query", "positions", "values")


def _preset_branches(preset: str, layout: str) -> tuple[str, str]:
    if preset == "paper":
        return "layernorm", "query"
    return ("plain", "positions") if layout == "parallel" else ("bottleneck", "values")


class _LayerNormC11(nn.Module):
    """LayerNorm over the C values of a B×C×1×1 tensor (the paper's LN on [C, 1, 1])."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(1))[:, :, None, None]  # B×C×1×1


@register_attention(
    "psa",
    paper="Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
    arxiv="2107.00782",
    year=2021,
    kind="self-attention",
)
class PolarizedSelfAttention(nn.Module):
    """Polarized self-attention: channel-only and spatial-only branches.

    Args:
        channels: input channels C.
        layout: ``"parallel"`` (PSA_p, default) or ``"sequential"`` (PSA_s).
        preset: ``"paper"`` (default) or ``"official"``; see the module docstring.
        rd_ratio: inner width as a fraction of C (paper: 1/2).
        rd_channels: inner width given directly; overrides ``rd_ratio``.
        channel_transform: after the channel pooling: ``"layernorm"`` (W_z, LN), ``"plain"``
            (W_z only) or ``"bottleneck"`` (conv to inner/4, LN, ReLU, conv); None: preset.
        spatial_softmax: where the spatial branch's softmax goes: ``"query"`` (over the
            pooled query's channels), ``"positions"`` (over the positions of the product) or
            ``"values"`` (over the positions of each value channel); None: preset.
    """

    def __init__(
        self,
        channels: int,
        *,
        layout: str = "parallel",
        preset: str = "paper",
        rd_ratio: float = 1 / 2,
        rd_channels: int | None = None,
        channel_transform: str | None = None,
        spatial_softmax: str | None = None,
    ) -> None:
        super().__init__()
        owner = "PolarizedSelfAttention"
        self.channels = check_channels(owner, channels)
        self.layout = check_choice(owner, "layout", layout, PSA_LAYOUTS)
        self.preset = check_choice(owner, "preset", preset, PSA_PRESETS)
        default_transform, default_softmax = _preset_branches(preset, layout)
        self.channel_transform = check_choice(
            owner, "channel_transform", channel_transform or default_transform, CHANNEL_TRANSFORMS
        )
        self.spatial_softmax = check_choice(
            owner, "spatial_softmax", spatial_softmax or default_softmax, SPATIAL_SOFTMAX
        )
        inner = reduced_channels(owner, channels, rd_ratio, rd_channels)
        self.inner_channels = inner
        # Channel-only branch.
        self.ch_query = nn.Conv2d(channels, 1, 1, bias=False)  # W_q
        self.ch_value = nn.Conv2d(channels, inner, 1, bias=False)  # W_v
        if self.channel_transform == "bottleneck":
            hidden = max(1, inner // 4)
            self.ch_transform = nn.Sequential(
                nn.Conv2d(inner, hidden, 1),
                _LayerNormC11(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, 1),
            )
        else:
            layers: list[nn.Module] = [nn.Conv2d(inner, channels, 1, bias=False)]  # W_z
            if self.channel_transform == "layernorm":
                layers.append(_LayerNormC11(channels))
            self.ch_transform = nn.Sequential(*layers)
        # Spatial-only branch.
        self.sp_query = nn.Conv2d(channels, inner, 1, bias=False)  # W_q
        self.sp_value = nn.Conv2d(channels, inner, 1, bias=False)  # W_v
        self.channel_map = MapTap("channel")
        self.spatial_map = MapTap("spatial")

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """A^ch, B×C×1×1."""
        query = torch.softmax(self.ch_query(x).flatten(2), dim=-1)  # B×1×N, over positions
        value = self.ch_value(x).flatten(2)  # B×C/2×N
        pooled = torch.bmm(value, query.transpose(1, 2))[..., None]  # B×C/2×1×1
        return self.channel_map(torch.sigmoid(self.ch_transform(pooled)))

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """A^sp, B×1×H×W."""
        batch, _, height, width = x.shape
        query = self.sp_query(x).mean((2, 3))[:, None, :]  # B×1×C/2, F_GP
        value = self.sp_value(x).flatten(2)  # B×C/2×N
        if self.spatial_softmax == "query":
            query = torch.softmax(query, dim=-1)
        elif self.spatial_softmax == "values":
            value = torch.softmax(value, dim=-1)  # over positions, per channel
        logits = torch.bmm(query, value)  # B×1×N
        if self.spatial_softmax == "positions":
            logits = torch.softmax(logits, dim=-1)
        attention = torch.sigmoid(logits).reshape(batch, 1, height, width)
        return self.spatial_map(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if self.layout == "parallel":
            return x * self.channel_attention(x) + x * self.spatial_attention(x)
        y = x * self.channel_attention(x)
        return y * self.spatial_attention(y)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, layout={self.layout!r}, preset={self.preset!r}, "
            f"channel_transform={self.channel_transform!r}, "
            f"spatial_softmax={self.spatial_softmax!r}"
        )
