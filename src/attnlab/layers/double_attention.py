"""Double attention block (Chen et al., "A²-Nets: Double Attention Networks", NeurIPS 2018,
arXiv 1810.11579).

Step 1, feature gathering (second-order attention pooling, paper Eq. 4): A = φ(X), m feature
maps (1×1 conv C → m); B = softmax over the N = H·W positions of θ(X), n attention maps
(1×1 conv C → n); the n global descriptors are G = A Bᵀ, m×n.
Step 2, feature distribution (Eq. 5): V = softmax over the n descriptors of ρ(X) (1×1 conv
C → n) at each position; Z_i = G v_i, m channels per position.
Output: a 1×1 conv m → C brings Z back to C channels and is added to the input (the block is a
residual unit): y = X + W_out Z.

Nothing here is quadratic in N: the largest intermediate is G (m×n) or Z (m×N), so memory is
already linear in H·W; the two matrix products are computed in that order (gather, then
distribute), never as the N×N product Bᵀ V.

Widths: m = ``rd_channels_m`` or C·``rd_ratio_m`` and n likewise, both C/4 by default (the
paper leaves them to the experiment). The module follows the paper's equations (Eq. 4-5);
no released code of the authors is referenced, so there is no preset. ``norm_layer`` (None
by default, as the paper's equations) adds a normalisation after the output conv;
``zero_init`` starts the output conv (or that norm's weight) at 0 so the block is an identity
at init, for insertion into pretrained networks (default False: the paper does not say).

Observable maps: ``gather_map`` (kind ``"gather"``, B×n×H×W, the n softmax maps of step 1) and
``distribute_map`` (kind ``"distribute"``, B×n×H×W, each position's weights over the n
descriptors).

Example:
    >>> import torch
    >>> from attnlab.layers import DoubleAttention
    >>> a2 = DoubleAttention(64)
    >>> a2(torch.randn(2, 64, 9, 14)).shape
    torch.Size([2, 64, 9, 14])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_batch_statistics, check_channels, check_input, reduced_channels
from .maps import MapTap


@register_attention(
    "a2",
    paper="A²-Nets: Double Attention Networks (NeurIPS 2018)",
    arxiv="1810.11579",
    year=2018,
    kind="self-attention",
)
class DoubleAttention(nn.Module):
    """Double attention: gather n global descriptors, distribute them to every position.

    Args:
        channels: input channels C.
        rd_ratio_m: m (feature width of φ) as a fraction of C.
        rd_ratio_n: n (number of descriptors, width of θ and ρ) as a fraction of C.
        rd_channels_m: m given directly; overrides ``rd_ratio_m``.
        rd_channels_n: n given directly; overrides ``rd_ratio_n``.
        norm_layer: normalisation after the output conv, or None (default).
        zero_init: start the block as an identity (output conv or norm weight at 0).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio_m: float = 1 / 4,
        rd_ratio_n: float = 1 / 4,
        rd_channels_m: int | None = None,
        rd_channels_n: int | None = None,
        norm_layer: Any = None,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.channels = check_channels("DoubleAttention", channels)
        m = reduced_channels("DoubleAttention", channels, rd_ratio_m, rd_channels_m)
        n = reduced_channels("DoubleAttention", channels, rd_ratio_n, rd_channels_n)
        self.m, self.n = m, n
        self.features = nn.Conv2d(channels, m, 1)  # φ: A
        self.gather = nn.Conv2d(channels, n, 1)  # θ: B
        self.distribute = nn.Conv2d(channels, n, 1)  # ρ: V
        self.out_conv = nn.Conv2d(m, channels, 1)
        self.norm = nn.Identity() if norm_layer is None else norm_layer(channels)
        self.identity_at_init = bool(zero_init)
        if zero_init:
            target = self.out_conv if norm_layer is None else self.norm
            nn.init.zeros_(target.weight)
            if norm_layer is None:
                nn.init.zeros_(target.bias)
        self.gather_map = MapTap("gather")
        self.distribute_map = MapTap("distribute")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, channels, height, width = x.shape
        a = self.features(x).flatten(2)  # B×m×N
        b = torch.softmax(self.gather(x).flatten(2), dim=-1)  # B×n×N, softmax over positions
        v = torch.softmax(self.distribute(x).flatten(2), dim=1)  # B×n×N, softmax over n
        self.gather_map(b.reshape(batch, self.n, height, width))
        self.distribute_map(v.reshape(batch, self.n, height, width))
        descriptors = torch.bmm(a, b.transpose(1, 2))  # G: B×m×n
        z = torch.bmm(descriptors, v).reshape(batch, self.m, height, width)  # B×m×H×W
        check_batch_statistics(
            "DoubleAttention", self.norm, batch * height * width, "call .eval() or use None"
        )
        return x + self.norm(self.out_conv(z))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, m={self.m}, n={self.n}"
