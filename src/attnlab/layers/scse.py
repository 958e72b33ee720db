"""Concurrent spatial and channel squeeze-and-excitation (Roy, Navab, Wachinger, "Concurrent
Spatial and Channel Squeeze & Excitation in Fully Convolutional Networks", MICCAI 2018,
arXiv 1803.02579; journal version "Recalibrating Fully Convolutional Networks with Spatial and
Channel 'Squeeze & Excitation' Blocks", IEEE TMI 2019, arXiv 1808.08127).

Equations: cSE: Û_cSE = U · σ(W₂ δ(W₁ z)), z = GAP(U), W₁ ∈ R^{C/r×C}, W₂ ∈ R^{C×C/r} (as SE);
sSE: Û_sSE = U · σ(q), q = W_sq ⋆ U a 1×1 convolution C→1; scSE combines the two
recalibrated tensors element-wise: by addition in the conference paper, by maximum in the
journal version (max-out came first in its comparison with addition, multiplication and
concatenation).

Presets:
    ``"journal"`` (default): max combination, r = 2, FCs and the 1×1 conv with bias: the
        authors' released code (ai-med/squeeze_and_excitation, ``ChannelSpatialSELayer``) and
        the journal's best setting. Default because it is what the authors ship.
    ``"conference"``: addition (the MICCAI paper's equation), r = 2 as in the authors' code.
    ``"smp"``: addition, r = 16: segmentation_models_pytorch's ``SCSEModule`` (the decoders'
        ``decoder_attention_type="scse"``).
Any argument given explicitly overrides the preset. ``mode`` picks "cse", "sse" or "scse".

Example:
    >>> import torch
    >>> from attnlab.layers import SCSE
    >>> scse = SCSE(64, preset="smp")
    >>> scse.combine, scse.cse_fc1.out_channels
    ('add', 4)
    >>> scse(torch.randn(2, 64, 9, 11)).shape
    torch.Size([2, 64, 9, 11])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, reduced_channels, resolve_preset
from .maps import MapTap

PRESETS = {
    "journal": dict(combine="max", rd_ratio=1 / 2),
    "conference": dict(combine="add", rd_ratio=1 / 2),
    "smp": dict(combine="add", rd_ratio=1 / 16),
}


@register_attention(
    "scse",
    paper="Concurrent Spatial and Channel Squeeze & Excitation in FCNs (MICCAI 2018)",
    arxiv="1803.02579",
    year=2018,
    kind="hybrid",
)
class SCSE(nn.Module):
    """cSE, sSE or their concurrent combination scSE.

    Args:
        channels: input channels C.
        preset: ``"journal"`` (default), ``"conference"`` or ``"smp"``; see the module docs.
        mode: ``"scse"`` (default; both branches), ``"cse"`` (channel only) or ``"sse"``
            (spatial only).
        combine: ``"max"`` or ``"add"``: how scSE joins Û_cSE and Û_sSE (preset's value if
            None).
        rd_ratio: 1/r of W₁ (preset's value if None).
        rd_channels: width of W₁ given directly; overrides ``rd_ratio``.
        rd_divisor: round the width to a multiple of this (1 = floor, as the authors do).
        bias: bias in W₁, W₂ and W_sq (all implementations: True).
        act_layer: δ, the hidden activation class (ReLU).
        gate_layer: σ, the gating function class (Sigmoid).

    Observable maps: ``channel_map`` (kind ``"channel"``, B×C×1×1) and ``spatial_map``
    (kind ``"spatial"``, B×1×H×W), for the branches ``mode`` builds.
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "journal",
        mode: str = "scse",
        combine: str | None = None,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        bias: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SCSE", channels)
        cfg = resolve_preset("SCSE", PRESETS, preset, combine=combine, rd_ratio=rd_ratio)
        self.preset = preset
        self.mode = check_choice("SCSE", "mode", mode, ("scse", "cse", "sse"))
        self.combine = check_choice("SCSE", "combine", cfg["combine"], ("max", "add"))
        if mode != "sse":
            hidden = reduced_channels("SCSE", channels, cfg["rd_ratio"], rd_channels, rd_divisor)
            self.cse_fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)  # W₁
            self.cse_act = act_layer()
            self.cse_fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)  # W₂
            self.cse_gate = gate_layer()
            self.channel_map = MapTap("channel")
        if mode != "cse":
            self.sse_conv = nn.Conv2d(channels, 1, 1, bias=bias)  # W_sq
            self.sse_gate = gate_layer()
            self.spatial_map = MapTap("spatial")

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """cSE's gate σ(W₂ δ(W₁ z)) as B×C×1×1."""
        z = x.mean((2, 3), keepdim=True)  # B×C×1×1
        s = self.cse_gate(self.cse_fc2(self.cse_act(self.cse_fc1(z))))
        return self.channel_map(s)

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """sSE's gate σ(W_sq ⋆ U) as B×1×H×W."""
        return self.spatial_map(self.sse_gate(self.sse_conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if self.mode == "cse":
            return x * self.channel_attention(x)
        if self.mode == "sse":
            return x * self.spatial_attention(x)
        u_cse = x * self.channel_attention(x)
        u_sse = x * self.spatial_attention(x)
        return torch.maximum(u_cse, u_sse) if self.combine == "max" else u_cse + u_sse

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, preset={self.preset!r}, mode={self.mode!r}, "
            f"combine={self.combine!r}"
        )
