"""Efficient Multi-scale Attention (Ouyang et al., "Efficient Multi-Scale Attention Module with
Cross-Spatial Learning", ICASSP 2023, arXiv 2305.13563).

The paper's Fig. 3, per group: X (C×H×W) is split into G groups of C' = C/G channels that are
moved into the batch axis (no channel reduction). Each group X_g goes through two branches:

- 1×1 branch (Coordinate-Attention-like): z^h = mean over W, z^w = mean over H; a shared 1×1
  conv (C'→C') on [z^h; z^w]; split; X₁ = GN(X_g · σ(a^h) · σ(a^w)), GN with one group per
  channel.
- 3×3 branch: X₂ = conv3×3(X_g) (C'→C', padding 1).

Cross-spatial learning: each branch's globally pooled vector, softmaxed over its C' channels,
weighs the other branch's positions: M = softmax(GAP(X₁))ᵀ·X₂ + softmax(GAP(X₂))ᵀ·X₁ (one value
per position); Y_g = X_g · σ(M). The groups are put back together: Y is C×H×W.

The authors' code (YOLOonMe/EMA-attention-module) is the reference for these equations; its
argument ``factor`` is ``groups`` here (default 32 there and here). Its layer names
(``conv1x1``, ``conv3x3``, ``gn``) are kept, so its weights load module by module. Parameters
per module: (C')² + C' (1×1 conv) + 9(C')² + C' (3×3 conv) + 2C' (GN), with C' = C/G.

Groups: G = ``groups``, capped at C (one channel per group); C must be divisible by G.

Example:
    >>> import torch
    >>> from attnlab.layers import EMA
    >>> ema = EMA(256)                    # 32 groups of C' = 8: 10·8² + 2·8 + 2·8
    >>> sum(p.numel() for p in ema.parameters())
    672
    >>> ema(torch.randn(2, 256, 7, 5)).shape
    torch.Size([2, 256, 7, 5])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input
from .maps import MapTap
from .shuffle import channel_group_norm


@register_attention(
    "ema",
    paper="Efficient Multi-Scale Attention Module with Cross-Spatial Learning (ICASSP 2023)",
    arxiv="2305.13563",
    year=2023,
    kind="hybrid",
)
class EMA(nn.Module):
    """Efficient Multi-scale Attention: grouped 1×1 and 3×3 branches, cross-spatial weights.

    Args:
        channels: input channels C.
        groups: G (the authors' ``factor``, default 32), capped at C.
        norm_layer: GN of the 1×1 branch, called with C' channels (default: one group per
            channel, as the authors' code).
        gate_layer: σ (Sigmoid), used for the directional gates and the final map.

    Observable maps: ``height_map`` / ``width_map`` (kinds ``"height"`` / ``"width"``, σ(a^h)
    as B×C×H×1 and σ(a^w) as B×C×1×W) and ``spatial_map`` (kind ``"group-spatial"``, σ(M) as
    B×G×H×W, one map per group).
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 32,
        norm_layer: Callable[[int], nn.Module] = channel_group_norm,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("EMA", channels)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"EMA: groups must be a positive int, got {groups!r}")
        self.groups = min(groups, channels)
        if channels % self.groups:
            raise ValueError(
                f"EMA: channels must be divisible by groups; got channels={channels} with "
                f"groups={self.groups}"
            )
        width = channels // self.groups  # C'
        self.conv1x1 = nn.Conv2d(width, width, 1)
        self.conv3x3 = nn.Conv2d(width, width, 3, padding=1)
        self.gn = norm_layer(width)
        self.gate = gate_layer()
        self.height_map = MapTap("height")
        self.width_map = MapTap("width")
        self.spatial_map = MapTap("group-spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        b, c, h, w = x.shape
        g = self.groups
        xg = x.reshape(b * g, c // g, h, w)  # (B·G)×C'×H×W
        z_h = xg.mean(3, keepdim=True)  # (B·G)×C'×H×1
        z_w = xg.mean(2, keepdim=True).transpose(2, 3)  # (B·G)×C'×W×1
        a = self.conv1x1(torch.cat([z_h, z_w], dim=2))  # (B·G)×C'×(H+W)×1
        g_h = self.height_map(self.gate(a[:, :, :h]).reshape(b, c, h, 1))
        g_w = self.width_map(self.gate(a[:, :, h:]).transpose(2, 3).reshape(b, c, 1, w))
        x1 = self.gn(xg * g_h.reshape(b * g, -1, h, 1) * g_w.reshape(b * g, -1, 1, w))
        x2 = self.conv3x3(xg)  # (B·G)×C'×H×W
        w1 = x1.mean((2, 3)).softmax(dim=1)[:, :, None, None]  # (B·G)×C'×1×1
        w2 = x2.mean((2, 3)).softmax(dim=1)[:, :, None, None]
        m = (w1 * x2).sum(1, keepdim=True) + (w2 * x1).sum(1, keepdim=True)  # (B·G)×1×H×W
        s = self.spatial_map(self.gate(m).reshape(b, g, h, w))
        return (xg * s.reshape(b * g, 1, h, w)).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"
