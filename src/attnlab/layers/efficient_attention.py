"""Efficient attention (Shen et al., "Efficient Attention: Attention with Linear
Complexities", WACV 2021, arXiv 1812.01243).

Q = conv1×1(X) and K = conv1×1(X) with d_k channels, V = conv1×1(X) with d_v channels; with
positions as rows (N×d), paper Eq. 4:

    E(Q, K, V) = ρ_q(Q) (ρ_k(K)ᵀ V)

ρ_q applies a softmax along each query's d_k channels (each row), ρ_k a softmax along the N
positions of each key channel (each column). ρ_k(K)ᵀ V is a d_k×d_v matrix of global context
vectors, so time and memory are linear in N; the N×N matrix of dot-product attention never
exists. With ``normalization="scaling"`` (Eq. 5) ρ_q(Y) = ρ_k(Y) = Y/√N, which makes E equal
to dot-product attention with 1/N scaling (the paper's equivalence result).

Heads (``head_count``): the d_k and d_v channels are split into equal groups, each attended
separately; the concatenated results go through a 1×1 reprojection d_v → C and are added to
the input (residual), as in the authors' code. Widths d_k = d_v = C/2 by default
(``rd_ratio``; the authors' code takes them as required arguments). The authors' code and the
paper agree on the computation, so there is no preset.

Observable map: ``spatial_map`` (kind ``"spatial"``), ρ_k(K) averaged over the key channels
of all heads, B×1×H×W: how much each position contributes to the global context vectors (each
channel's weights sum to 1 over the positions).

Example:
    >>> import torch
    >>> from attnlab.layers import EfficientAttention
    >>> ea = EfficientAttention(64, head_count=2)
    >>> ea(torch.randn(2, 64, 30, 11)).shape
    torch.Size([2, 64, 30, 11])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, reduced_channels
from .maps import MapTap

NORMALIZATIONS = ("softmax", "scaling")


@register_attention(
    "effattn",
    paper="Efficient Attention: Attention with Linear Complexities (WACV 2021)",
    arxiv="1812.01243",
    year=2021,
    kind="self-attention",
)
class EfficientAttention(nn.Module):
    """Efficient attention: ρ_q(Q)(ρ_k(K)ᵀV), linear in the number of positions.

    Args:
        channels: input channels C.
        rd_ratio: d_k = d_v as a fraction of C (default 1/2).
        key_channels: d_k given directly; overrides ``rd_ratio``.
        value_channels: d_v given directly; overrides ``rd_ratio``.
        head_count: number of heads; must divide d_k and d_v.
        normalization: ``"softmax"`` (Eq. 4, default) or ``"scaling"`` (Eq. 5, 1/√N).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 2,
        key_channels: int | None = None,
        value_channels: int | None = None,
        head_count: int = 1,
        normalization: str = "softmax",
    ) -> None:
        super().__init__()
        owner = "EfficientAttention"
        self.channels = check_channels(owner, channels)
        d_k = reduced_channels(owner, channels, rd_ratio, key_channels)
        d_v = reduced_channels(owner, channels, rd_ratio, value_channels)
        if isinstance(head_count, bool) or not isinstance(head_count, int) or head_count < 1:
            raise ValueError(f"{owner}: head_count must be an int >= 1, got {head_count!r}")
        if d_k % head_count or d_v % head_count:
            raise ValueError(
                f"{owner}: head_count must divide key_channels and value_channels, got "
                f"head_count={head_count} with key_channels={d_k}, value_channels={d_v}"
            )
        self.normalization = check_choice(owner, "normalization", normalization, NORMALIZATIONS)
        self.key_channels, self.value_channels, self.head_count = d_k, d_v, head_count
        self.queries = nn.Conv2d(channels, d_k, 1)
        self.keys = nn.Conv2d(channels, d_k, 1)
        self.values = nn.Conv2d(channels, d_v, 1)
        self.reprojection = nn.Conv2d(d_v, channels, 1)
        self.spatial_map = MapTap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, _, height, width = x.shape
        n, heads = height * width, self.head_count
        q = self.queries(x).reshape(batch * heads, self.key_channels // heads, n)  # B·h×dk×N
        k = self.keys(x).reshape(batch * heads, self.key_channels // heads, n)  # B·h×dk×N
        v = self.values(x).reshape(batch * heads, self.value_channels // heads, n)  # B·h×dv×N
        if self.normalization == "softmax":
            q = torch.softmax(q, dim=1)  # ρ_q: over each query's channels
            k = torch.softmax(k, dim=2)  # ρ_k: over positions
        else:
            q, k = q * n**-0.5, k * n**-0.5
        if self.spatial_map.observed:
            weight = k.detach().mean(1).reshape(batch, heads, height, width).mean(1, keepdim=True)
            self.spatial_map(weight)  # B×1×H×W
        context = torch.bmm(k, v.transpose(1, 2))  # ρ_k(K)ᵀV: B·h×dk×dv
        attended = torch.bmm(context.transpose(1, 2), q)  # B·h×dv×N
        attended = attended.reshape(batch, self.value_channels, height, width)
        return x + self.reprojection(attended)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_channels={self.key_channels}, "
            f"value_channels={self.value_channels}, head_count={self.head_count}, "
            f"normalization={self.normalization!r}"
        )
