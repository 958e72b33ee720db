"""Coordinate Attention (Hou, Zhou, Feng, "Coordinate Attention for Efficient Mobile Network
Design", CVPR 2021, arXiv 2103.02907).

Paper, Eq. 4-9: pool x along W (z^h, C×H×1) and along H (z^w, C×1×W); concatenate along the
spatial axis and apply a shared 1×1 conv F₁ (C → C/r, r = 32, at least 8 wide) with BN and a
non-linearity δ (h-swish): f = δ(F₁([z^h, z^w])); split f into f^h and f^w; g^h = σ(F_h(f^h)),
g^w = σ(F_w(f^w)); y = x · g^h · g^w.

Presets: ``"paper"`` (default; the authors' code: r = 32, minimum width 8, h-swish, convs with
bias) and ``"yolo"`` (the YOLO attention repositories: r = 16, ReLU, no minimum width,
bias-free convs). Any argument given explicitly overrides the preset.

Example:
    >>> import torch
    >>> from attnlab.layers import CoordAttention
    >>> ca = CoordAttention(64)
    >>> ca(torch.randn(2, 64, 13, 17)).shape
    torch.Size([2, 64, 13, 17])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input, norm_or_identity, reduced_channels, resolve_preset
from .maps import MapTap

PRESETS = {
    "paper": dict(rd_ratio=1 / 32, min_channels=8, act_layer=nn.Hardswish, bias=True),
    "yolo": dict(rd_ratio=1 / 16, min_channels=1, act_layer=nn.ReLU, bias=False),
}


@register_attention(
    "ca",
    paper="Coordinate Attention for Efficient Mobile Network Design (CVPR 2021)",
    arxiv="2103.02907",
    year=2021,
    kind="hybrid",
)
class CoordAttention(nn.Module):
    """Coordinate Attention: direction-aware pooling, shared transform, two gates.

    Args:
        channels: input channels C.
        preset: ``"paper"`` (default) or ``"yolo"``; arguments left as None take its value.
        rd_ratio: 1/r of F₁ (paper 1/32, yolo 1/16).
        rd_channels: width of F₁ given directly; overrides ``rd_ratio`` and the minimum.
        rd_divisor: round the width to a multiple of this (1 = floor).
        min_channels: lower bound on the width (paper 8, yolo 1).
        bias: bias on the three 1×1 convs (paper True, yolo False).
        act_layer: δ (paper: h-swish, ``nn.Hardswish``; yolo: ReLU).
        norm_layer: norm after F₁ (BatchNorm2d), or None.
        gate_layer: σ (Sigmoid).

    Observable maps: ``height_map`` (kind ``"height"``, g^h as B×C×H×1) and ``width_map``
    (kind ``"width"``, g^w as B×C×1×W).
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "paper",
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        min_channels: int | None = None,
        bias: bool | None = None,
        act_layer: type[nn.Module] | None = None,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("CoordAttention", channels)
        cfg = resolve_preset(
            "CoordAttention",
            PRESETS,
            preset,
            rd_ratio=rd_ratio,
            min_channels=min_channels,
            bias=bias,
            act_layer=act_layer,
        )
        self.preset = preset
        hidden = reduced_channels(
            "CoordAttention",
            channels,
            cfg["rd_ratio"],
            rd_channels,
            rd_divisor,
            min_channels=cfg["min_channels"],
        )
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=cfg["bias"])  # F₁
        self.norm = norm_or_identity(norm_layer, hidden)
        self.act = cfg["act_layer"]()
        self.conv_h = nn.Conv2d(hidden, channels, 1, bias=cfg["bias"])  # F_h
        self.conv_w = nn.Conv2d(hidden, channels, 1, bias=cfg["bias"])  # F_w
        self.gate = gate_layer()
        self.height_map = MapTap("height")
        self.width_map = MapTap("width")

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g^h as B×C×H×1, g^w as B×C×1×W) for ``x``, no input validation."""
        g_h, g_w = self.gates(x.mean(3), x.mean(2))  # B×C×H, B×C×W
        return g_h[..., None], g_w[:, :, None, :]  # B×C×H×1, B×C×1×W

    def gates(self, z_h: torch.Tensor, z_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(g^h as B×C×H, g^w as B×C×W) from the pooled z_h (B×C×H) and z_w (B×C×W)."""
        height = z_h.shape[2]
        z = torch.cat([z_h, z_w], dim=2)[..., None]  # B×C×(H+W)×1
        f = self.act(self.norm(self.conv1(z)))  # B×mid×(H+W)×1
        f_h, f_w = f[:, :, :height], f[:, :, height:]  # B×mid×H×1, B×mid×W×1
        g_h = self.height_map(self.gate(self.conv_h(f_h)))  # B×C×H×1
        g_w = self.width_map(self.gate(self.conv_w(f_w.transpose(2, 3))))  # B×C×1×W
        return g_h[..., 0], g_w[:, :, 0, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        g_h, g_w = self.attention(x)
        return x * g_h * g_w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, preset={self.preset!r}"
