"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi, "Gather-Excite: Exploiting Feature Context in
Convolutional Neural Networks", NeurIPS 2018, arXiv 1810.12348).

Paper, Sec. 3: a gather operator ξ_G aggregates each channel over windows of extent ratio e
(e = 0 here means global: one cell per channel), producing x̂ of size ⌈H/e⌉×⌈W/e⌉; the excite
operator ξ_E(x, x̂) = x ⊙ σ(interp(x̂)) redistributes it with nearest-neighbour interpolation.
Variants:

- ``"theta-"`` (GE-θ⁻, default): parameter-free gather by average pooling. Global by default
  (x̂ = GAP(x)), the paper's headline setting (ResNet-50 + GE-θ⁻ outperforms ResNet-101 with no
  added parameter).
- ``"theta"`` (GE-θ): gather by depth-wise convolutions. For extent e = 2ᵏ, k depth-wise 3×3
  stride-2 convs (no bias), each followed by BN and, except the last, by δ (ReLU). Global
  gather: one depth-wise conv whose kernel covers the whole map, which fixes the map size:
  pass ``feat_size``.
- ``"theta+"`` (GE-θ⁺): GE-θ followed by an SE-style 1×1 MLP C→C/r→C (r = 16, with bias, δ
  between) before σ.

The authors' code is Caffe prototxts (hujie-frank/GENet), not read here; the finite-extent
layers follow timm's ``GatherExcite`` (average pool of window 2e−1 and stride e without the
padding in the mean; the conv stack above). Interpolation: each position takes the gathered
cell it falls in (i // e), which is F.interpolate's nearest whenever e divides the map size,
and has a deterministic backward on every device.

Example:
    >>> import torch
    >>> from attnlab.layers import GatherExcite
    >>> ge = GatherExcite(64)                            # GE-θ⁻, global: no parameters
    >>> sum(p.numel() for p in ge.parameters())
    0
    >>> GatherExcite(64, variant="theta", extent=4)(torch.randn(2, 64, 9, 13)).shape
    torch.Size([2, 64, 9, 13])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_choice,
    check_input,
    norm_or_identity,
    reduced_channels,
)
from .maps import MapTap

VARIANTS = ("theta-", "theta", "theta+")


def _check_extent(extent: object) -> int:
    if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0:
        raise ValueError(f"GatherExcite: extent must be 0 (global) or a power of 2, got {extent!r}")
    if extent > 1 and extent & (extent - 1):
        raise ValueError(f"GatherExcite: extent must be 0 (global) or a power of 2, got {extent}")
    return extent


@register_attention(
    "ge",
    paper="Gather-Excite: Exploiting Feature Context in CNNs (NeurIPS 2018)",
    arxiv="1810.12348",
    year=2018,
    kind="hybrid",
)
class GatherExcite(nn.Module):
    """Gather-Excite: pool over an extent, redistribute as a gate.

    Args:
        channels: input channels C.
        variant: ``"theta-"`` (default), ``"theta"`` or ``"theta+"``.
        extent: e, the extent ratio: 0 = global (default), or 2, 4, 8 … (1 = no pooling).
        feat_size: (H, W) of the input, required by the parametric global gather (its
            depth-wise kernel is H×W); inputs of another size are refused.
        rd_ratio: 1/r of GE-θ⁺'s MLP (1/16).
        rd_channels: width of the MLP given directly; overrides ``rd_ratio``.
        rd_divisor: round the MLP width to a multiple of this (1 = floor).
        act_layer: δ, between the gather convs and inside the MLP (ReLU).
        norm_layer: norm after each gather conv (BatchNorm2d), or None.
        gate_layer: σ (Sigmoid).

    Observable map: ``gather_map``, σ(x̂) before interpolation: kind ``"channel"`` (B×C×1×1)
    when global, else kind ``"gather"`` (B×C×⌈H/e⌉×⌈W/e⌉).
    """

    def __init__(
        self,
        channels: int,
        *,
        variant: str = "theta-",
        extent: int = 0,
        feat_size: tuple[int, int] | None = None,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("GatherExcite", channels)
        self.variant = check_choice("GatherExcite", "variant", variant, VARIANTS)
        self.extent = _check_extent(extent)
        self.feat_size = None if feat_size is None else tuple(feat_size)
        self.gather = nn.Sequential()
        if variant != "theta-":
            if extent == 0:
                if self.feat_size is None or len(self.feat_size) != 2:
                    raise ValueError(
                        f"GatherExcite: variant {variant!r} with a global extent needs "
                        f"feat_size=(H, W) (its depth-wise kernel covers the map), "
                        f"got {feat_size!r}"
                    )
                self.gather.append(
                    nn.Conv2d(channels, channels, self.feat_size, groups=channels, bias=False)
                )
                self.gather.append(norm_or_identity(norm_layer, channels))
            else:
                steps = int(math.log2(extent))
                for i in range(steps):
                    self.gather.append(
                        nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False)
                    )
                    self.gather.append(norm_or_identity(norm_layer, channels))
                    if i != steps - 1:
                        self.gather.append(act_layer())
        self.mlp = nn.Sequential()
        if variant == "theta+":
            hidden = reduced_channels("GatherExcite", channels, rd_ratio, rd_channels, rd_divisor)
            self.mlp.append(nn.Conv2d(channels, hidden, 1))
            self.mlp.append(act_layer())
            self.mlp.append(nn.Conv2d(hidden, channels, 1))
        self.gate = gate_layer()
        # Global: one gate per channel, the "channel" kind the viewers read; else per cell.
        self.gather_map = MapTap("channel" if extent == 0 else "gather")

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ = ξ_G(x) (after GE-θ⁺'s MLP), as B×C×⌈H/e⌉×⌈W/e⌉."""
        b, _, h, w = x.shape
        if self.variant == "theta-":
            if self.extent == 0:
                return x.mean((2, 3), keepdim=True)
            e = self.extent
            return F.avg_pool2d(x, 2 * e - 1, e, e - 1, count_include_pad=False)
        if self.extent == 0:
            if (h, w) != self.feat_size:
                raise ValueError(
                    f"GatherExcite: the global depth-wise gather was built for feat_size "
                    f"{self.feat_size}, got a {h}×{w} map (input shape {tuple(x.shape)})"
                )
            cells = b
        else:
            cells = b * math.ceil(h / self.extent) * math.ceil(w / self.extent)
        for m in self.gather:
            check_batch_statistics(
                "GatherExcite",
                m,
                cells,
                "use batch size >= 2 or a larger map, call .eval(), or norm_layer=None",
            )
        return self.mlp(self.gather(x))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """σ(interp(x̂)) for ``x``: B×C×1×1 when global, else B×C×H×W (no input validation)."""
        g = self.gather_map(self.gate(self.gathered(x)))
        if self.extent <= 1:  # global (B×C×1×1, broadcast) or no pooling
            return g
        e, h, w = self.extent, x.shape[2], x.shape[3]
        # Nearest: position i takes cell i // e. B×C×⌈H/e⌉×⌈W/e⌉ → B×C×H×W
        return g.repeat_interleave(e, dim=2)[:, :, :h].repeat_interleave(e, dim=3)[:, :, :, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant!r}, extent={self.extent}"
