"""Shuffle Attention (Zhang, Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural
Networks", ICASSP 2021, arXiv 2102.00240).

Paper, Eq. 1-4: split X (C×H×W) into G groups X_k of C/G channels, and each group into two
halves X_k1, X_k2 of C/2G channels. Channel half: s = F_gp(X_k1) (global average pool),
X'_k1 = σ(W₁ s + b₁) · X_k1. Spatial half: X'_k2 = σ(W₂ GN(X_k2) + b₂) · X_k2, where GN is
group normalisation with one group per channel. W₁, b₁, W₂, b₂ ∈ R^{C/2G×1×1} are shared by
all G groups. Concatenate [X'_k1, X'_k2], put the groups back together, and apply a "channel
shuffle" with 2 groups so that the two halves' channels interleave.

The authors' code (wofmanaf/SA-Net, ``sa_layer``) matches the paper; its parameter names
(``cweight``, ``cbias``, ``sweight``, ``sbias``, ``gn``) are kept, so its weights load module
by module. It initialises W to 0 and b to 1, so every gate starts at σ(1) ≈ 0.731. Parameters
per module: 3·C/G (4·C/2G gate parameters + the GN's C/2G weights and C/2G biases).

Groups: G = ``groups`` (paper and code 64 on ResNet-50), capped at C/2 so that narrow layers
work (G = C/2 is one channel per half); C must be divisible by 2G.

Example:
    >>> import torch
    >>> from attnlab.layers import ShuffleAttention
    >>> sa = ShuffleAttention(256)        # 64 groups of 4 channels: 3·256/64 = 12 parameters
    >>> sum(p.numel() for p in sa.parameters())
    12
    >>> sa(torch.randn(2, 256, 7, 5)).shape
    torch.Size([2, 256, 7, 5])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input
from .maps import MapTap


def channel_group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with one group per channel (normalises each channel over its positions)."""
    return nn.GroupNorm(num_channels, num_channels)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: B×(g·n)×H×W read as g×n, transposed to n×g."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@register_attention(
    "sa",
    paper="SA-Net: Shuffle Attention for Deep Convolutional Neural Networks (ICASSP 2021)",
    arxiv="2102.00240",
    year=2021,
    kind="hybrid",
)
class ShuffleAttention(nn.Module):
    """Shuffle Attention: per group, a channel gate on one half and a spatial gate on the other.

    Args:
        channels: input channels C.
        groups: G, the number of groups (paper 64), capped at C/2.
        norm_layer: GN of the spatial half, called with its C/2G channels (default: one group
            per channel, as paper and code).
        gate_layer: σ (Sigmoid).

    Observable maps: ``channel_map`` (kind ``"channel"``, the channel halves' gates as
    B×(C/2)×1×1, group by group) and ``spatial_map`` (kind ``"channel-spatial"``, the spatial
    halves' gates as B×(C/2)×H×W, group by group).
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 64,
        norm_layer: Callable[[int], nn.Module] = channel_group_norm,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("ShuffleAttention", channels)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"ShuffleAttention: groups must be a positive int, got {groups!r}")
        self.groups = min(groups, channels // 2)
        if self.groups < 1 or channels % (2 * self.groups):
            raise ValueError(
                f"ShuffleAttention: channels must be divisible by 2·groups; got channels="
                f"{channels} with groups={groups} (capped at channels // 2: {self.groups})"
            )
        half = channels // (2 * self.groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))  # W₁
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))  # b₁
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))  # W₂
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))  # b₂
        self.gn = norm_layer(half)
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")
        self.spatial_map = MapTap("channel-spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        b, c, h, w = x.shape
        xg = x.reshape(b * self.groups, c // self.groups, h, w)  # (B·G)×(C/G)×H×W
        x1, x2 = xg.chunk(2, dim=1)  # (B·G)×(C/2G)×H×W each
        s_c = self.gate(self.cweight * x1.mean((2, 3), keepdim=True) + self.cbias)
        s_c = self.channel_map(s_c.reshape(b, c // 2, 1, 1)).reshape(b * self.groups, -1, 1, 1)
        s_s = self.gate(self.sweight * self.gn(x2) + self.sbias)  # (B·G)×(C/2G)×H×W
        s_s = self.spatial_map(s_s.reshape(b, c // 2, h, w)).reshape_as(x2)
        out = torch.cat([x1 * s_c, x2 * s_s], dim=1).reshape(b, c, h, w)  # B×C×H×W
        return channel_shuffle(out, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
