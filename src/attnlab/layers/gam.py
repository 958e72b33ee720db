"""Global Attention Mechanism (Liu, Shao, Hoffmann, "Global Attention Mechanism: Retain
Information to Enhance Channel-Spatial Interactions", arXiv 2112.05561).

Paper, Eq. 1-2 and Fig. 2-4: F₂ = M_c(F₁) ⊗ F₁, F₃ = M_s(F₂) ⊗ F₂. The channel gate keeps all
three dimensions: the input is permuted to H×W×C and a two-layer MLP (C → C/r → C, ReLU)
runs over the channel axis at every position (equivalently, two 1×1 convolutions), then σ:
M_c is C×H×W. The spatial gate has no pooling: 7×7 conv C → C/r + BN + ReLU, 7×7 conv C/r → C
+ BN, σ: M_s is C×H×W too. r = 4 (paper).

The authors released no code. A widely copied re-implementation multiplies by the channel MLP's
output *without* σ; it is the ``"popular"`` preset, the default ``"paper"`` applies σ after
the reverse permutation, as the paper's channel sub-module does. For ResNet-50 the paper uses
group convolutions with channel shuffle in the spatial gate to limit parameters: ``groups=g``
makes both 7×7 convolutions g-grouped and shuffles the spatial map's channels with g groups
(as that re-implementation's grouped variant, g = 4). MLP layers and convolutions have biases
(paper silent; re-implementation).

Example:
    >>> import torch
    >>> from attnlab.layers import GAM
    >>> gam = GAM(64)                     # r = 4: 16 hidden channels
    >>> gam(torch.randn(2, 64, 13, 17)).shape
    torch.Size([2, 64, 13, 17])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_input,
    check_odd_kernel,
    norm_or_identity,
    reduced_channels,
    resolve_preset,
)
from .maps import MapTap
from .shuffle import channel_shuffle

PRESETS = {"paper": dict(channel_sigmoid=True), "popular": dict(channel_sigmoid=False)}
ADVICE = "use batch size >= 2 or a larger map, call .eval(), or norm_layer=None"


@register_attention(
    "gam",
    paper="Global Attention Mechanism: Retain Information to Enhance Channel-Spatial "
    "Interactions (2021)",
    arxiv="2112.05561",
    year=2021,
    kind="hybrid",
)
class GAM(nn.Module):
    """Global Attention Mechanism: a per-position channel MLP gate, then a conv spatial gate.

    Args:
        channels: input channels C.
        preset: ``"paper"`` (default, σ on the channel gate) or ``"popular"`` (no σ there).
        channel_sigmoid: apply σ to the channel MLP's output; overrides the preset.
        rd_ratio: 1/r (paper 1/4) for both the MLP and the spatial gate's hidden width.
        rd_channels: hidden width given directly; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this (1 = floor).
        kernel_size: spatial convolutions' kernel (paper 7).
        groups: groups of both spatial convolutions, with a channel shuffle of M_s (1 = none).
        act_layer: ReLU of the MLP and of the spatial gate.
        norm_layer: BN after each spatial convolution (BatchNorm2d), or None.
        gate_layer: σ (Sigmoid).

    Observable maps: ``channel_map`` and ``spatial_map`` (kind ``"channel-spatial"``, M_c and
    M_s as B×C×H×W).
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "paper",
        channel_sigmoid: bool | None = None,
        rd_ratio: float = 1 / 4,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        kernel_size: int = 7,
        groups: int = 1,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("GAM", channels)
        cfg = resolve_preset("GAM", PRESETS, preset, channel_sigmoid=channel_sigmoid)
        self.preset = preset
        self.channel_sigmoid = bool(cfg["channel_sigmoid"])
        hidden = reduced_channels("GAM", channels, rd_ratio, rd_channels, rd_divisor)
        k = check_odd_kernel("GAM", "kernel_size", kernel_size)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"GAM: groups must be a positive int, got {groups!r}")
        if channels % groups or hidden % groups:
            raise ValueError(
                f"GAM: channels ({channels}) and the hidden width ({hidden}) must be divisible "
                f"by groups ({groups})"
            )
        self.groups = groups
        self.fc1 = nn.Conv2d(channels, hidden, 1)  # MLP layer 1, per position
        self.act1 = act_layer()
        self.fc2 = nn.Conv2d(hidden, channels, 1)  # MLP layer 2
        self.conv1 = nn.Conv2d(channels, hidden, k, padding=k // 2, groups=groups)
        self.norm1 = norm_or_identity(norm_layer, hidden)
        self.act2 = act_layer()
        self.conv2 = nn.Conv2d(hidden, channels, k, padding=k // 2, groups=groups)
        self.norm2 = norm_or_identity(norm_layer, channels)
        self.gate = gate_layer()
        self.channel_map = MapTap("channel-spatial")
        self.spatial_map = MapTap("channel-spatial")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        check_batch_statistics("GAM", self.norm1, count, ADVICE)
        m_c = self.fc2(self.act1(self.fc1(x)))  # B×C×H×W
        if self.channel_sigmoid:
            m_c = self.gate(m_c)
        f2 = x * self.channel_map(m_c)
        m_s = self.gate(self.norm2(self.conv2(self.act2(self.norm1(self.conv1(f2))))))
        if self.groups > 1:
            m_s = channel_shuffle(m_s, self.groups)
        return f2 * self.spatial_map(m_s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, preset={self.preset!r}, groups={self.groups}"
