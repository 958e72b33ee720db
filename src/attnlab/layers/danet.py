"""DANet's position and channel attention (Fu et al., "Dual Attention Network for Scene
Segmentation", CVPR 2019, arXiv 1809.02983).

Position attention (PAM, paper Eq. 1-2): B = conv(A), C = conv(A) with C/8 channels,
D = conv(A) with C channels (1×1, bias); s_ji = softmax_i(B_iᵀ C_j) over the N = H·W keys, no
1/√d scaling; E_j = α Σ_i s_ji D_i + A_j, with α (``gamma``) a scalar initialised to 0.

Channel attention (CAM, Eq. 3-4): no convolutions. With A as C×N, energy X = A Aᵀ (C×C);
x_ji = softmax_i(A_i · A_j); E_j = β Σ_i x_ji A_i + A_j, β initialised to 0. The authors'
code takes the softmax of (rowmax(X) − X), which equals softmax(−X): ``variant="official"``
(default, it produced the published results) or ``"paper"`` (softmax(X)).

PAM's attention matrix is N×N: 1 GiB per image at 128×128 in float32, 10 GiB at 224×224.
Here it is never built whole for large maps: queries are processed in blocks of at most
``max_block_elements`` scores, and under autograd each block is recomputed in backward
(activation checkpointing) rather than stored, so memory grows linearly in N for inference and
for training.

Example:
    >>> import torch
    >>> from attnlab.layers import PositionAttention, ChannelAttention
    >>> x = torch.randn(1, 64, 40, 30)
    >>> PositionAttention(64)(x).shape, ChannelAttention(64)(x).shape
    (torch.Size([1, 64, 40, 30]), torch.Size([1, 64, 40, 30]))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, reduced_channels
from .maps import MapTap

CAM_VARIANTS = ("official", "paper")
DEFAULT_BLOCK_ELEMENTS = 1 << 22  # 4M scores: 16 MiB per block in float32


def _attend_block(
    q_block: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention for a block of b queries: (B×C×b output, B×N attention received)."""
    scores = torch.softmax(torch.bmm(q_block, k), dim=-1)  # B×b×N, softmax over keys
    return torch.bmm(v, scores.transpose(1, 2)), scores.sum(1)  # B×C×b, B×N


def position_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int | None = None,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    recompute: bool = True,
    return_received: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(QᵀK) applied to V over all positions, computed in blocks of queries.

    Args:
        q: queries, B×N×d.
        k: keys, B×d×N.
        v: values, B×C×N.
        block_size: queries per block; None picks the largest block with at most
            ``max_block_elements`` scores (B·block·N). ``block_size >= N`` is the unblocked
            formulation (one N×N matrix).
        max_block_elements: score budget per block when ``block_size`` is None.
        recompute: with autograd on and more than one block, recompute each block's scores
            in backward instead of storing them (keeps training memory linear in N).
        return_received: also return, per key position, the attention it receives averaged
            over queries (B×N); costs one reduction per block.

    Returns:
        out as B×C×N (out_j = Σ_i s_ji v_i), or (out, received) when asked.
    """
    batch, n = q.shape[0], q.shape[1]
    if block_size is None:
        block_size = max(1, max_block_elements // max(1, batch * n))
    if block_size < 1:
        raise ValueError(f"position_attention: block_size must be >= 1, got {block_size}")
    block_size = min(block_size, n)
    store = not (recompute and torch.is_grad_enabled() and block_size < n)
    outs, received = [], None
    for start in range(0, n, block_size):
        q_block = q[:, start : start + block_size]  # B×b×d
        if store:
            out, got = _attend_block(q_block, k, v)
        else:
            out, got = checkpoint(_attend_block, q_block, k, v, use_reentrant=False)
        outs.append(out)
        if return_received:
            received = got if received is None else received + got
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # B×C×N
    if return_received:
        return out, received / n
    return out


@register_attention(
    "pam",
    paper="Dual Attention Network for Scene Segmentation (CVPR 2019), position attention",
    arxiv="1809.02983",
    year=2019,
    kind="self-attention",
)
class PositionAttention(nn.Module):
    """DANet position attention module (PAM), blocked so memory is linear in H·W.

    Args:
        channels: input channels C.
        rd_ratio: query/key width as a fraction of C (paper: 1/8).
        qk_channels: query/key width given directly; overrides ``rd_ratio``.
        block_size: queries per block, or None (default) for automatic blocks bounded by
            ``max_block_elements`` scores. Results do not depend on it beyond rounding.
        max_block_elements: score budget per block (default 4M, 16 MiB in float32).
        recompute: recompute block scores in backward instead of storing them.

    Observable map: ``spatial_map`` (kind ``"spatial"``), the attention each position
    receives averaged over all queries, B×1×H×W (computed only while a hook is attached).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 8,
        qk_channels: int | None = None,
        block_size: int | None = None,
        max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        self.channels = check_channels("PositionAttention", channels)
        qk = reduced_channels("PositionAttention", channels, rd_ratio, qk_channels)
        if block_size is not None and (isinstance(block_size, bool) or block_size < 1):
            raise ValueError(f"PositionAttention: block_size must be >= 1, got {block_size!r}")
        if max_block_elements < 1:
            raise ValueError(
                f"PositionAttention: max_block_elements must be >= 1, got {max_block_elements}"
            )
        self.block_size = block_size
        self.max_block_elements = max_block_elements
        self.recompute = recompute
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # α of the paper
        self.spatial_map = MapTap("spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, channels, height, width = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B×N×d
        k = self.key(x).flatten(2)  # B×d×N
        v = self.value(x).flatten(2)  # B×C×N
        observed = self.spatial_map.observed
        result = position_attention(
            q,
            k,
            v,
            block_size=self.block_size,
            max_block_elements=self.max_block_elements,
            recompute=self.recompute,
            return_received=observed,
        )
        if observed:
            out, received = result
            self.spatial_map(received.reshape(batch, 1, height, width))  # B×1×H×W
        else:
            out = result
        return self.gamma * out.reshape(batch, channels, height, width) + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, qk_channels={self.query.out_channels}"


@register_attention(
    "cam",
    paper="Dual Attention Network for Scene Segmentation (CVPR 2019), channel attention",
    arxiv="1809.02983",
    year=2019,
    kind="self-attention",
)
class ChannelAttention(nn.Module):
    """DANet channel attention module (CAM): C×C affinities of the raw features.

    Args:
        channels: input channels C.
        variant: ``"official"`` (default; softmax of rowmax(X) − X, the authors' code that
            produced the published results) or ``"paper"`` (softmax(X), Eq. 3).

    Observable map: ``channel_map`` (kind ``"channel-affinity"``), the attention matrix
    x_ji as B×C×C.
    """

    def __init__(self, channels: int, *, variant: str = "official") -> None:
        super().__init__()
        self.channels = check_channels("ChannelAttention", channels)
        self.variant = check_choice("ChannelAttention", "variant", variant, CAM_VARIANTS)
        self.gamma = nn.Parameter(torch.zeros(1))  # β of the paper
        self.channel_map = MapTap("channel-affinity")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, channels, height, width = x.shape
        a = x.reshape(batch, channels, height * width)  # B×C×N
        energy = torch.bmm(a, a.transpose(1, 2))  # B×C×C
        if self.variant == "official":
            energy = energy.amax(-1, keepdim=True) - energy
        attention = self.channel_map(torch.softmax(energy, dim=-1))  # B×C×C
        out = torch.bmm(attention, a).reshape(batch, channels, height, width)
        return self.gamma * out + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant!r}"
