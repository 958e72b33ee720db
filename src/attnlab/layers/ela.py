"""Efficient Local Attention (Xu, Wan, "ELA: Efficient Local Attention for Deep Convolutional
Neural Networks", arXiv 2403.01123).

Paper, Eq. 4-7: strip pooling along each spatial axis, z^h = mean over W (C×H) and z^w = mean
over H (C×W); one shared 1-D convolution F_k along the strip (no channel reduction), group
normalisation G_n and σ: y^h = σ(G_n(F_k(z^h))), y^w = σ(G_n(F_k(z^w))); Y = X · y^h · y^w.
Unlike Coordinate Attention there is no concatenation and no 1×1 channel reduction.

Presets (the paper's four variants; k = kernel size of F_k, conv groups, GN groups):
``"tiny"`` (ELA-T: k = 5, depth-wise, GN 32), ``"base"`` (ELA-B: k = 7, depth-wise, GN 16),
``"small"`` (ELA-S: k = 5, C/8 conv groups, GN 16) and ``"large"`` (ELA-L: k = 7, C/8 conv
groups, GN 16). The convolution has no bias. Default ``"base"``: the setting most
re-implementations use (k = 7, depth-wise, GN 16), and one of the two variants (with ELA-S)
meant for deeper networks such as ResNet. Any argument given explicitly overrides the preset.
GN groups are capped at C.

Example:
    >>> import torch
    >>> from attnlab.layers import ELA
    >>> ela = ELA(64)                     # base: 64 depth-wise kernels of 7 + GN(16, 64)
    >>> sum(p.numel() for p in ela.parameters())
    576
    >>> ela(torch.randn(2, 64, 13, 17)).shape
    torch.Size([2, 64, 13, 17])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input, check_odd_kernel, resolve_preset
from .maps import MapTap

# conv_groups: "depthwise" (one group per channel) or "eighth" (C/8 groups of 8 channels).
PRESETS = {
    "tiny": dict(kernel_size=5, conv_groups="depthwise", norm_groups=32),
    "base": dict(kernel_size=7, conv_groups="depthwise", norm_groups=16),
    "small": dict(kernel_size=5, conv_groups="eighth", norm_groups=16),
    "large": dict(kernel_size=7, conv_groups="eighth", norm_groups=16),
}


@register_attention(
    "ela",
    paper="ELA: Efficient Local Attention for Deep Convolutional Neural Networks (2024)",
    arxiv="2403.01123",
    year=2024,
    kind="hybrid",
)
class ELA(nn.Module):
    """Efficient Local Attention: strip pooling, a shared 1-D conv + GN, two gates.

    Args:
        channels: input channels C.
        preset: ``"tiny"``, ``"base"`` (default), ``"small"`` or ``"large"``.
        kernel_size: k of the 1-D conv F_k (odd).
        conv_groups: groups of F_k, an int dividing C, or ``"depthwise"`` (C) or ``"eighth"``
            (C/8, at least 1).
        norm_groups: GN groups (capped at C; must divide C).
        norm_layer: G_n, called as ``norm_layer(norm_groups, C)`` (``nn.GroupNorm``).
        gate_layer: σ (Sigmoid).

    Observable maps: ``height_map`` (kind ``"height"``, y^h as B×C×H×1) and ``width_map``
    (kind ``"width"``, y^w as B×C×1×W).
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "base",
        kernel_size: int | None = None,
        conv_groups: int | str | None = None,
        norm_groups: int | None = None,
        norm_layer: Callable[[int, int], nn.Module] = nn.GroupNorm,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("ELA", channels)
        cfg = resolve_preset(
            "ELA",
            PRESETS,
            preset,
            kernel_size=kernel_size,
            conv_groups=conv_groups,
            norm_groups=norm_groups,
        )
        self.preset = preset
        k = check_odd_kernel("ELA", "kernel_size", cfg["kernel_size"])
        groups = {"depthwise": channels, "eighth": max(1, channels // 8)}.get(
            cfg["conv_groups"], cfg["conv_groups"]
        )
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(
                "ELA: conv_groups must be a positive int, 'depthwise' or 'eighth', "
                f"got {cfg['conv_groups']!r}"
            )
        n_groups = cfg["norm_groups"]
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
            raise ValueError(f"ELA: norm_groups must be a positive int, got {n_groups!r}")
        n_groups = min(n_groups, channels)
        if channels % groups or channels % n_groups:
            raise ValueError(
                f"ELA: channels must be divisible by conv_groups and norm_groups; got "
                f"channels={channels}, conv_groups={groups}, norm_groups={n_groups}"
            )
        self.conv = nn.Conv1d(channels, channels, k, padding=k // 2, groups=groups, bias=False)
        self.norm = norm_layer(n_groups, channels)
        self.gate = gate_layer()
        self.height_map = MapTap("height")
        self.width_map = MapTap("width")

    def normalise(self, t: torch.Tensor) -> torch.Tensor:
        """G_n of a B×C×L strip."""
        if t.shape[0] * t.shape[2] == 1 and isinstance(self.norm, nn.GroupNorm):
            # PyTorch's GroupNorm refuses a batch of one strip of length 1 (with one channel
            # per group that is one value per group); it normalises each sample on its own,
            # so a batch of two copies gives the same result.
            return self.norm(t.expand(2, -1, -1))[:1]
        return self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        y_h = self.gate(self.normalise(self.conv(x.mean(3))))  # B×C×H
        y_w = self.gate(self.normalise(self.conv(x.mean(2))))  # B×C×W
        return x * self.height_map(y_h[..., None]) * self.width_map(y_w[:, :, None, :])

    def extra_repr(self) -> str:
        return f"channels={self.channels}, preset={self.preset!r}"
