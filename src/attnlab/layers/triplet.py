"""Triplet attention (Misra, Nalamada, Arasanipalai, Hou, "Rotate to Attend: Convolutional
Triplet Attention Module", WACV 2021, arXiv 2010.03045).

Paper, Sec. 3.2: three branches, each a spatial-attention gate on a rotated view of x:
Z-pool(t) = [MaxPool₀(t); AvgPool₀(t)] over the first (non-batch) axis, then a k×k conv 2→1
(k = 7, no bias) + BN, σ. Branch 1 rotates x so H is pooled (an interaction between C and W),
branch 2 so W is pooled (C and H), branch 3 pools C (H and W, CBAM's spatial gate); each gate
multiplies its rotated view, which is rotated back. y = 1/3 (ŷ₁ + ŷ₂ + ŷ₃).

The rotations are written here as poolings over H, W or C with the pooled map laid out as the
authors' permutes lay it out (branch 1's conv sees a C×W plane, branch 2's an H×C plane, branch
3's H×W), so weights carry over from the authors' code name by name. The authors' code and the
paper agree: Z-pool order [max, mean], BatchNorm(eps 1e-5, momentum 0.01) after each conv,
k = 7. ``spatial=False`` drops branch 3 (the authors' ``no_spatial``; y is then the mean of two).

Example:
    >>> import torch
    >>> from attnlab.layers import TripletAttention
    >>> ta = TripletAttention(64)         # 3 × (2·7·7 conv + 2 BN) = 300 parameters
    >>> sum(p.numel() for p in ta.parameters())
    300
    >>> ta(torch.randn(2, 64, 9, 11)).shape
    torch.Size([2, 64, 9, 11])
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_input,
    check_odd_kernel,
    norm_or_identity,
)
from .maps import MapTap

# The authors' gate BN: BatchNorm2d(1, eps=1e-5, momentum=0.01).
TRIPLET_NORM = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.01)


class ZPoolGate(nn.Module):
    """σ(BN(conv_k([max; mean]))) of a 2-map stack: one branch's attention.

    Args:
        kernel_size: k, odd.
        norm_layer: normalisation after the conv (one channel), or None.
        gate_layer: σ.
    """

    def __init__(
        self,
        kernel_size: int,
        norm_layer: type[nn.Module] | None,
        gate_layer: type[nn.Module],
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = norm_or_identity(norm_layer, 1)
        self.gate = gate_layer()

    def forward(self, mx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Gate for the pooled maps ``mx`` and ``mean`` (each B×P×Q) as B×1×P×Q."""
        z = torch.stack([mx, mean], dim=1)  # Z-pool: B×2×P×Q
        return self.gate(self.norm(self.conv(z)))


@register_attention(
    "triplet",
    paper="Rotate to Attend: Convolutional Triplet Attention Module (WACV 2021)",
    arxiv="2010.03045",
    year=2021,
    kind="hybrid",
)
class TripletAttention(nn.Module):
    """Triplet attention: three Z-pool gates over the (C, W), (H, C) and (H, W) planes.

    Args:
        channels: input channels C (checked against the input; the module's weights do not
            depend on it).
        kernel_size: k of every branch's conv (paper: 7; the authors also release k = 3).
        spatial: keep the H–W branch (default True; False = the authors' ``no_spatial``).
        norm_layer: normalisation after each conv (authors: BatchNorm2d, eps 1e-5, momentum
            0.01), or None.
        gate_layer: σ, the gating function class (Sigmoid).

    Observable maps: ``width_map`` (kind ``"width"``, branch 1 as B×C×1×W), ``height_map``
    (kind ``"height"``, branch 2 as B×C×H×1) and ``spatial_map`` (kind ``"spatial"``,
    branch 3 as B×1×H×W).
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        spatial: bool = True,
        norm_layer: type[nn.Module] | None = TRIPLET_NORM,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("TripletAttention", channels)
        self.kernel_size = check_odd_kernel("TripletAttention", "kernel_size", kernel_size)
        self.spatial = bool(spatial)
        self.cw = ZPoolGate(kernel_size, norm_layer, gate_layer)  # branch 1: C–W
        self.hc = ZPoolGate(kernel_size, norm_layer, gate_layer)  # branch 2: H–C
        self.hw = ZPoolGate(kernel_size, norm_layer, gate_layer) if spatial else None
        self.width_map = MapTap("width")
        self.height_map = MapTap("height")
        self.spatial_map = MapTap("spatial") if spatial else None

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The averaged gate 1/n Σ aᵢ broadcast to B×C×H×W (no input validation)."""
        b, c, h, w = x.shape
        check_batch_statistics(
            "TripletAttention",
            self.cw.norm,
            b * min(c * w, h * c, h * w if self.spatial else c * w),
            "use batch size >= 2 or a larger map, call .eval(), or norm_layer=None",
        )
        # Branch 1: pool over H; the conv sees the C×W plane (authors: permute(0, 2, 1, 3)).
        a_cw = self.cw(x.amax(2), x.mean(2))  # B×1×C×W
        a_cw = self.width_map(a_cw.transpose(1, 2))  # B×C×1×W
        # Branch 2: pool over W; the conv sees the H×C plane (authors: permute(0, 3, 2, 1)).
        a_hc = self.hc(x.amax(3).transpose(1, 2), x.mean(3).transpose(1, 2))  # B×1×H×C
        a_hc = self.height_map(a_hc.permute(0, 3, 2, 1))  # B×C×H×1
        if self.hw is None:
            return (a_cw + a_hc) / 2
        # Branch 3: pool over C; the conv sees the H×W plane (CBAM's spatial gate).
        a_hw = self.spatial_map(self.hw(x.amax(1), x.mean(1)))  # B×1×H×W
        return (a_cw + a_hc + a_hw) / 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, spatial={self.spatial}"
