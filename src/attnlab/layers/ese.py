"""Effective Squeeze-and-Excitation (Lee, Park, "CenterMask: Real-Time Anchor-Free Instance
Segmentation", CVPR 2020, arXiv 1911.06667), the channel gate of VoVNetV2.

Paper, Eq. 2: A_eSE(X_div) = σ(W_C(F_gap(X_div))), X_refine = A_eSE ⊗ X_div, with F_gap the
global average pool, W_C ∈ R^{C×C} one fully connected layer (a 1×1 convolution with bias in
the authors' code) and σ the hard sigmoid, ReLU6(t + 3) / 6. Keeping one C→C layer instead of
SE's C→C/r→C avoids the channel information lost in SE's reduction.

The authors' VoVNetV2 code and the paper agree (one 1×1 conv with bias, hard sigmoid); the
default follows them. ``gate_layer=nn.Sigmoid`` gives the logistic variant some
re-implementations use.

Example:
    >>> import torch
    >>> from attnlab.layers import EffectiveSE
    >>> ese = EffectiveSE(64)             # W_C: 64·64 weights + 64 biases
    >>> sum(p.numel() for p in ese.parameters())
    4160
    >>> ese(torch.randn(2, 64, 7, 9)).shape
    torch.Size([2, 64, 7, 9])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input
from .maps import MapTap


@register_attention(
    "ese",
    paper="CenterMask: Real-Time Anchor-Free Instance Segmentation (CVPR 2020)",
    arxiv="1911.06667",
    year=2020,
    kind="channel",
)
class EffectiveSE(nn.Module):
    """Effective SE: one C→C fully connected layer on the pooled descriptor, hard sigmoid.

    Args:
        channels: input channels C.
        bias: bias in W_C (authors' code: True).
        gate_layer: σ, the gating function class (paper: hard sigmoid, ``nn.Hardsigmoid``).

    Observable map: ``channel_map`` (kind ``"channel"``), the gate A_eSE as B×C×1×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        bias: bool = True,
        gate_layer: type[nn.Module] = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("EffectiveSE", channels)
        self.fc = nn.Conv2d(channels, channels, 1, bias=bias)  # W_C
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate A_eSE for ``x``, as B×C×1×1 (no input validation)."""
        pooled = x.mean((2, 3), keepdim=True)  # F_gap: B×C×1×1
        return self.channel_map(self.gate(self.fc(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
