"""Bottleneck Attention Module (Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module",
BMVC 2018, arXiv 1807.06514).

Paper, Eq. 1-4: F' = F + F ⊗ M(F), M(F) = σ(M_c(F) + M_s(F)), with
M_c(F) = BN(MLP(AvgPool(F))) (C → C/r → C, r = 16; here the BN sits on the hidden layer as in
the authors' code: FC → BN → ReLU → FC), and
M_s(F) = BN(f₃^{1×1}(f₂^{3×3}(f₁^{3×3}(f₀^{1×1}(F))))): a 1×1 reduction to C/r, two 3×3
convolutions with dilation d = 4 (padding 4, size preserved), each followed by BN and ReLU,
and a final 1×1 conv to one channel applied to the output of the dilated convolutions.

Where the authors' code differs from the paper, ``fusion`` chooses: ``"sum"`` (paper, the best
combination in its ablation, default) or ``"product"`` (authors' code: σ(M_c · M_s)).
``preset="official"`` selects ``"product"``.

BAM goes between stages (after stages 1-3 of a ResNet), not inside every block.

Known defects of other versions avoided here: the channel branch pools with ``mean`` over
H and W, so non-square maps work (the authors' code assumes H == W); the final 1×1 reads the
dilated output; padding equals the dilation, so the map keeps its size.

Example:
    >>> import torch
    >>> from attnlab.layers import BAM
    >>> bam = BAM(256)
    >>> bam(torch.randn(2, 256, 28, 20)).shape
    torch.Size([2, 256, 28, 20])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_choice,
    check_input,
    norm_or_identity,
    reduced_channels,
    resolve_preset,
)
from .maps import MapTap

FUSIONS = ("sum", "product")
PRESETS = {"paper": dict(fusion="sum"), "official": dict(fusion="product")}


class BAMChannelBranch(nn.Module):
    """M_c: GAP → FC C→C/r → BN → act → FC C/r→C (logits, B×C)."""

    def __init__(self, channels, hidden, *, bias, act_layer, norm_layer) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.norm = norm_or_identity(norm_layer, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch_statistics(
            "BAM",
            self.norm,
            x.shape[0],
            "the channel branch's BatchNorm normalises over the batch: use batch size >= 2, "
            "call .eval(), or build BAM(..., channel_norm_layer=None)",
        )
        return self.fc2(self.act(self.norm(self.fc1(x.mean((2, 3))))))  # B×C


class BAMSpatialBranch(nn.Module):
    """M_s: 1×1 reduce → n × dilated 3×3 (each with norm and act) → 1×1 to one map."""

    def __init__(self, channels, hidden, *, dilation, num_dilated, bias, act_layer, norm_layer):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=bias),
            norm_or_identity(norm_layer, hidden),
            act_layer(),
        )
        self.dilated = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation, bias=bias),
                    norm_or_identity(norm_layer, hidden),
                    act_layer(),
                )
                for _ in range(num_dilated)
            )
        )
        self.project = nn.Conv2d(hidden, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch_statistics(
            "BAM",
            self.reduce[1],
            x.shape[0] * x.shape[2] * x.shape[3],
            "the spatial branch's BatchNorm sees one value per channel for a 1×1 map with "
            "batch size 1: use a larger batch or map, call .eval(), or build "
            "BAM(..., norm_layer=None)",
        )
        return self.project(self.dilated(self.reduce(x)))  # B×1×H×W


@register_attention(
    "bam",
    paper="BAM: Bottleneck Attention Module (BMVC 2018)",
    arxiv="1807.06514",
    year=2018,
    kind="hybrid",
)
class BAM(nn.Module):
    """Bottleneck Attention Module: F' = F + F ⊗ σ(fuse(M_c(F), M_s(F))).

    Args:
        channels: input channels C.
        preset: ``"paper"`` (default, fusion sum) or ``"official"`` (fusion product).
        fusion: ``"sum"`` (paper) or ``"product"`` (authors' code); overrides the preset.
        rd_ratio: 1/r for both branches (paper: 1/16).
        rd_channels: hidden width given directly; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this (1 = floor).
        dilation: d of the 3×3 convs (paper: 4); padding equals d so the size is kept.
        num_dilated: number of dilated 3×3 convs (paper: 2).
        bias: bias on every FC and conv (authors' code: True).
        act_layer: activation class (ReLU).
        gate_layer: σ, applied to the fused map (Sigmoid).
        norm_layer: 2-D norm class of the spatial branch (BatchNorm2d), or None.
        channel_norm_layer: 1-D norm class of the channel branch (BatchNorm1d), or None. With
            a BatchNorm here, training needs batch size >= 2 (a clear ValueError says so).

    Observable maps (pre-sigmoid branch outputs, before fusion): ``channel_map`` (kind
    ``"channel-logits"``, M_c as B×C×1×1) and ``spatial_map`` (kind ``"spatial-logits"``,
    M_s as B×1×H×W).
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "paper",
        fusion: str | None = None,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        dilation: int = 4,
        num_dilated: int = 2,
        bias: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        channel_norm_layer: type[nn.Module] | None = nn.BatchNorm1d,
    ) -> None:
        super().__init__()
        self.channels = check_channels("BAM", channels)
        cfg = resolve_preset("BAM", PRESETS, preset, fusion=fusion)
        self.preset = preset
        self.fusion = check_choice("BAM", "fusion", cfg["fusion"], FUSIONS)
        for name, value in (("dilation", dilation), ("num_dilated", num_dilated)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"BAM: {name} must be a non-negative int, got {value!r}")
        if dilation < 1:
            raise ValueError(f"BAM: dilation must be >= 1, got {dilation}")
        hidden = reduced_channels("BAM", channels, rd_ratio, rd_channels, rd_divisor)
        self.channel_branch = BAMChannelBranch(
            channels, hidden, bias=bias, act_layer=act_layer, norm_layer=channel_norm_layer
        )
        self.spatial_branch = BAMSpatialBranch(
            channels,
            hidden,
            dilation=dilation,
            num_dilated=num_dilated,
            bias=bias,
            act_layer=act_layer,
            norm_layer=norm_layer,
        )
        self.gate = gate_layer()
        self.channel_map = MapTap("channel-logits")
        self.spatial_map = MapTap("spatial-logits")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """σ(M(x)) broadcastable to x (B×C×H×W), no input validation."""
        mc = self.channel_map(self.channel_branch(x)[:, :, None, None])  # B×C×1×1
        ms = self.spatial_map(self.spatial_branch(x))  # B×1×H×W
        return self.gate(mc + ms if self.fusion == "sum" else mc * ms)  # B×C×H×W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x + x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fusion={self.fusion!r}"
