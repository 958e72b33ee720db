"""Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic
Segmentation", ICCV 2019, arXiv 1811.11721), in plain PyTorch.

Q = conv1×1(H) and K = conv1×1(H) with C/8 channels, V = conv1×1(H) with C channels (bias).
Each position u attends to the H + W − 1 positions of its column and row (the set Ω_u, the
centre counted once): d_{i,u} = Q_u Ω_{i,u}ᵀ, A = softmax over the H + W − 1 terms (paper
Eq. 1, no scaling), H'_u = Σ_i A_{i,u} Φ_{i,u} + H_u with the values Φ; the authors' code
multiplies the aggregated term by γ, a scalar initialised to 0, so the module starts as an
identity: y = γ · out + x. Recurrent criss-cross attention (RCCA) applies the module R times
with shared weights (``recurrence``, paper: R = 2), after which every position has a path to
every other one.

The centre is counted once, as in the paper and the authors' code: the column energies mask it
with −inf and the row energies keep it. Memory is O(H·W·(H + W)) (the two energy maps), never
O((H·W)²). No preset: the authors' code and the paper agree on everything the module computes
(the RCCA head's convolutions around it are in :mod:`attnlab.models.seg_heads`).

Observable map: ``spatial_map`` (kind ``"spatial"``), the attention each position receives,
averaged over all queries, B×1×H×W, from the last recurrence (computed only while its tap is
watched).

Example:
    >>> import torch
    >>> from attnlab.layers import CrissCrossAttention
    >>> cca = CrissCrossAttention(64, recurrence=2)
    >>> cca(torch.randn(2, 64, 12, 7)).shape
    torch.Size([2, 64, 12, 7])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input, reduced_channels
from .maps import MapTap


def criss_cross_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, return_received: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of each position over its row and column (the centre once).

    Args:
        q: queries, B×d×H×W.
        k: keys, B×d×H×W.
        v: values, B×C×H×W.
        return_received: also return the attention each position receives, averaged over
            the H·W queries (B×H×W).

    Returns:
        out as B×C×H×W, or (out, received).
    """
    height, width = q.shape[-2:]
    # energy_col[b, h, w, g] = q[:, h, w] · k[:, g, w]: the column of (h, w), B×H×W×H
    energy_col = torch.einsum("bchw,bcgw->bhwg", q, k)
    # The centre (g == h) also belongs to the row: count it there only. The mask compares two
    # ranges (not torch.eye: its ONNX form, EyeLike, has no float kernel in onnxruntime).
    rows = torch.arange(height, device=q.device)
    centre = (rows[:, None] == rows[None, :])[:, None, :]  # H×1×H
    energy_col = energy_col.masked_fill(centre, float("-inf"))
    energy_row = torch.einsum("bchw,bchv->bhwv", q, k)  # the row of (h, w), B×H×W×W
    attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
    att_col, att_row = attention.split([height, width], dim=-1)
    out = torch.einsum("bhwg,bcgw->bchw", att_col, v) + torch.einsum("bhwv,bchv->bchw", att_row, v)
    if not return_received:
        return out
    with torch.no_grad():
        # position (g, w) receives from its column's queries; (h, v) from its row's.
        received = att_col.sum(1).transpose(1, 2) + att_row.sum(2)  # B×H×W
    return out, received / (height * width)


@register_attention(
    "cc",
    paper="CCNet: Criss-Cross Attention for Semantic Segmentation (ICCV 2019)",
    arxiv="1811.11721",
    year=2019,
    kind="self-attention",
)
class CrissCrossAttention(nn.Module):
    """Criss-cross attention, applied ``recurrence`` times with shared weights (RCCA).

    Args:
        channels: input channels C.
        rd_ratio: query/key width as a fraction of C (paper: 1/8).
        qk_channels: query/key width given directly; overrides ``rd_ratio``.
        recurrence: R, how many times the module is applied (paper: 2; 1 is a single CCA).
    """

    # γ starts at 0, so every recurrence is an identity at init.
    identity_at_init = True

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        qk_channels: int | None = None,
        recurrence: int = 2,
    ) -> None:
        super().__init__()
        self.channels = check_channels("CrissCrossAttention", channels)
        qk = reduced_channels("CrissCrossAttention", channels, rd_ratio, qk_channels)
        if isinstance(recurrence, bool) or not isinstance(recurrence, int) or recurrence < 1:
            raise ValueError(
                f"CrissCrossAttention: recurrence must be an int >= 1, got {recurrence!r}"
            )
        self.recurrence = recurrence
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.spatial_map = MapTap("spatial")

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass: x + γ · out."""
        observed = self.spatial_map.observed
        result = criss_cross_attention(
            self.query(x), self.key(x), self.value(x), return_received=observed
        )
        if observed:
            out, received = result
            self.spatial_map(received[:, None])  # B×1×H×W
        else:
            out = result
        return x + self.gamma * out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        for _ in range(self.recurrence):
            x = self.attend(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, qk_channels={self.query.out_channels}, "
            f"recurrence={self.recurrence}"
        )
