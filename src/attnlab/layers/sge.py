"""Spatial Group-wise Enhance (Li, Hu, Yang, "Spatial Group-wise Enhance: Improving Semantic
Feature Learning in Convolutional Networks", arXiv 1905.09646).

Paper, Eq. 1-5, per group of C/G channels (G = 64): g = 1/m Σᵢ xᵢ (the group's mean vector
over its m = H·W positions); cᵢ = g · xᵢ (a dot product over the group's channels, one value per
position); ĉᵢ = (cᵢ − μ_c) / (σ_c + ε) with μ_c, σ_c the mean and standard deviation of c over
the positions; aᵢ = γ ĉᵢ + β, one (γ, β) pair per group, initialised to (0, 1); x̂ᵢ = xᵢ · σ(aᵢ).

The authors' code (PytorchInsight) computes σ_c with ``torch.std``, which divides by m − 1,
and adds ε = 1e-5 outside the square root; the paper writes σ_c² = 1/m Σ (cᵢ − μ_c)². The
default follows the code (``variance="unbiased"``); ``"biased"`` is Eq. 4 as printed. A 1×1
map has a single position, so m − 1 is taken as 1 there (ĉ is 0 either way); where σ_c is 0
its gradient is taken as 0, not the square root's inf · 0 = NaN.

Groups: G = ``groups`` (paper 64), capped at C, so the module also fits narrow layers
(G = C is one channel per group). C must be divisible by G.

Example:
    >>> import torch
    >>> from attnlab.layers import SpatialGroupEnhance
    >>> sge = SpatialGroupEnhance(256)    # 64 groups: 64 γ and 64 β
    >>> sum(p.numel() for p in sge.parameters())
    128
    >>> sge(torch.randn(2, 256, 7, 5)).shape
    torch.Size([2, 256, 7, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, safe_sqrt
from .maps import MapTap


@register_attention(
    "sge",
    paper="Spatial Group-wise Enhance: Improving Semantic Feature Learning in CNNs (2019)",
    arxiv="1905.09646",
    year=2019,
    kind="spatial",
)
class SpatialGroupEnhance(nn.Module):
    """SGE: each channel group gates its positions by their similarity to the group mean.

    Args:
        channels: input channels C.
        groups: G (paper: 64), capped at C; C must be divisible by the result.
        eps: ε added to σ_c (authors' code: 1e-5).
        variance: ``"unbiased"`` (default; authors' ``torch.std``, / (m − 1)) or ``"biased"``
            (Eq. 4, / m).
        gate_layer: σ, the gating function class (paper: Sigmoid).

    Observable map: ``spatial_map`` (kind ``"group-spatial"``), σ(a) as B×G×H×W.
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 64,
        eps: float = 1e-5,
        variance: str = "unbiased",
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SpatialGroupEnhance", channels)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"SpatialGroupEnhance: groups must be a positive int, got {groups!r}")
        self.groups = min(groups, channels)
        if channels % self.groups:
            raise ValueError(
                f"SpatialGroupEnhance: channels ({channels}) must be divisible by groups "
                f"({self.groups})"
            )
        self.eps = eps
        self.variance = check_choice(
            "SpatialGroupEnhance", "variance", variance, ("unbiased", "biased")
        )
        self.weight = nn.Parameter(torch.zeros(self.groups))  # γ
        self.bias = nn.Parameter(torch.ones(self.groups))  # β
        self.gate = gate_layer()
        self.spatial_map = MapTap("group-spatial")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """σ(a) for ``x``, as B×G×1×H×W (no input validation)."""
        b, c, h, w = x.shape
        xg = x.reshape(b, self.groups, c // self.groups, h, w)  # B×G×C/G×H×W
        g = xg.mean((3, 4), keepdim=True)  # group mean vector: B×G×C/G×1×1
        sim = (xg * g).sum(2)  # cᵢ = g·xᵢ: B×G×H×W
        centred = sim - sim.mean((2, 3), keepdim=True)
        n = max(h * w - 1, 1) if self.variance == "unbiased" else h * w
        std = safe_sqrt(centred.square().sum((2, 3), keepdim=True) / n)  # σ_c: B×G×1×1
        normed = centred / (std + self.eps)  # ĉ
        a = normed * self.weight[:, None, None] + self.bias[:, None, None]
        return self.spatial_map(self.gate(a))[:, :, None]  # B×G×1×H×W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        b, c, h, w = x.shape
        xg = x.reshape(b, self.groups, c // self.groups, h, w)  # B×G×C/G×H×W
        return (xg * self.attention(x)).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, variance={self.variance!r}"
