"""Efficient Channel Attention (Wang et al., "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020, arXiv 1910.03151).

Paper, Eq. 12-14: ω = σ(C1D_k(y)), y = GAP(x), a 1-D convolution of kernel k across the
channel axis (one input and one output channel, no bias, padding (k-1)/2), no reduction.
The adaptive kernel: k = ψ(C) = |log₂(C)/γ + b/γ|_odd with γ = 2, b = 1, i.e.
t = int(|log₂ C + b| / γ), k = t if t is odd else t + 1.

The authors' released ResNet checkpoints fix k per stage by hand (ResNet-50: 3, 5, 5, 7),
where the formula gives 5, 5, 5, 7 at the bottleneck outputs (C = 256, 512, 1024, 2048); pass
an int ``k_size`` to use the authors' values.

Presets: ``"paper"`` (default; zero padding, k = ψ(C)), ``"timm"`` (timm's ``EcaModule``:
k = max(ψ(C), 3)) and ``"ceca"`` (timm's ``CecaModule``: the same k with circular padding, so
the first and last channels are neighbours). Any argument given explicitly overrides the
preset.

Example:
    >>> import torch
    >>> from attnlab.layers import ECA, eca_kernel_size
    >>> [eca_kernel_size(c) for c in (64, 128, 256, 512, 1024, 2048)]
    [3, 5, 5, 5, 5, 7]
    >>> ECA(512)(torch.randn(1, 512, 7, 9)).shape
    torch.Size([1, 512, 7, 9])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import kernels
from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, check_odd_kernel, resolve_preset
from .maps import MapTap

PRESETS = {
    "paper": dict(padding_mode="zeros", min_k_size=1),
    "timm": dict(padding_mode="zeros", min_k_size=3),
    "ceca": dict(padding_mode="circular", min_k_size=3),
}


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The paper's adaptive kernel size ψ(C) = |log₂(C)/γ + b/γ|_odd (Eq. 14)."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return t if t % 2 == 1 else t + 1


@register_attention(
    "eca",
    paper="ECA-Net: Efficient Channel Attention for Deep CNNs (CVPR 2020)",
    arxiv="1910.03151",
    year=2020,
    kind="channel",
)
class ECA(nn.Module):
    """Efficient Channel Attention: a k-wide 1-D convolution across pooled channels.

    Args:
        channels: input channels C.
        preset: ``"paper"`` (default), ``"timm"`` or ``"ceca"``; arguments left as None take
            its value.
        k_size: ``"adaptive"`` (default, the paper's ψ(C)) or an explicit odd kernel size
            (the authors' per-stage checkpoints use 3, 5, 5, 7 for ResNet-50).
        gamma: γ of the adaptive rule (paper: 2).
        beta: b of the adaptive rule (paper: 1).
        padding_mode: ``"zeros"`` (paper) or ``"circular"`` (ceca) padding of the channel axis.
        min_k_size: lower bound on the adaptive kernel (paper 1; timm 3).
        gate_layer: σ, the gating function class (paper: Sigmoid).

    Observable map: ``channel_map`` (kind ``"channel"``), ω as B×C×1×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "paper",
        k_size: int | str = "adaptive",
        gamma: float = 2,
        beta: float = 1,
        padding_mode: str | None = None,
        min_k_size: int | None = None,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("ECA", channels)
        cfg = resolve_preset(
            "ECA", PRESETS, preset, padding_mode=padding_mode, min_k_size=min_k_size
        )
        self.preset = preset
        self.padding_mode = check_choice(
            "ECA", "padding_mode", cfg["padding_mode"], ("zeros", "circular")
        )
        if k_size == "adaptive":
            k_size = max(eca_kernel_size(channels, gamma, beta), cfg["min_k_size"])
        self.k_size = check_odd_kernel("ECA", "k_size", k_size)
        self.conv = nn.Conv1d(
            1,
            1,
            self.k_size,
            padding=(self.k_size - 1) // 2,
            padding_mode=self.padding_mode,
            bias=False,
        )
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate ω for ``x``, as B×C×1×1 (no input validation)."""
        return self.weights(x.mean((2, 3)))[:, :, None, None]  # B×C×1×1

    def weights(self, y: torch.Tensor) -> torch.Tensor:
        """ω from the pooled descriptor y (B×C) as B×C; the map tap sees it as B×C×1×1."""
        w = self.gate(self.conv(y[:, None, :]))  # B×1×C: channels as a 1-D sequence
        return self.channel_map(w.reshape(y.shape[0], self.channels, 1, 1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def kernel_spec(self) -> kernels.GateSpec:
        """The gate as :func:`attnlab.kernels.fuse` folds it with a block's last BatchNorm."""
        return kernels.GateSpec(
            channel=lambda y, _max: self.weights(y), channel_max=False, spatial=None
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, preset={self.preset!r}, k_size={self.k_size}"
