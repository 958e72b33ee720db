"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018,
arXiv 1709.01507).

Paper, Eq. 2-4: z = F_sq(u) = GAP(u); s = σ(W₂ δ(W₁ z)); x̃ = s · u, with W₁ ∈ R^{C/r × C},
W₂ ∈ R^{C × C/r}, δ = ReLU, r = 16. The authors' released models give both FC layers a bias
(default ``bias=True``) and no normalisation.

Presets: ``"paper"`` (default; hidden width ⌊C/r⌋, as the authors' code) and ``"timm"``
(timm's ``SEModule``: C/r rounded half up to a multiple of 8, at least 8, never bumped up;
weight for weight the same module, so SE layers of timm-built networks reproduce here). Any
argument given explicitly overrides the preset.

Example:
    >>> import torch
    >>> from attnlab.layers import SE
    >>> se = SE(256)                      # r = 16 → 16 hidden units
    >>> se(torch.randn(2, 256, 14, 14)).shape
    torch.Size([2, 256, 14, 14])
"""

from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_choice,
    check_input,
    norm_or_identity,
    reduced_channels,
    resolve_preset,
    timm_reduced_channels,
)
from .maps import MapTap

PRESETS = {
    "paper": dict(rd_divisor=1, width_rule="attnlab"),
    "timm": dict(rd_divisor=8, width_rule="timm"),
}
WIDTH_RULES = {"attnlab": reduced_channels, "timm": timm_reduced_channels}


@register_attention(
    "se",
    paper="Squeeze-and-Excitation Networks (CVPR 2018)",
    arxiv="1709.01507",
    year=2018,
    kind="channel",
)
class SE(nn.Module):
    """Squeeze-and-Excitation channel gate.

    Args:
        channels: input channels C.
        preset: ``"paper"`` (default) or ``"timm"``; arguments left as None take its value.
        rd_ratio: 1/r of the paper (default 1/16).
        rd_channels: hidden width C/r given directly; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this (paper: 1 = floor C·rd_ratio;
            timm: 8).
        width_rule: ``"attnlab"`` (the library's rounding: floor, or the nearest multiple
            bumped up if it loses more than 10 %) or ``"timm"`` (timm's SE rounding).
        bias: bias in both FC layers (authors' code: True).
        act_layer: δ, the hidden activation class (paper: ReLU).
        gate_layer: σ, the gating function class (paper: Sigmoid).
        norm_layer: optional 1-D normalisation after W₁ (e.g. ``nn.BatchNorm1d``); the paper
            has none.

    Observable map: ``channel_map`` (kind ``"channel"``), the gate s as B×C×1×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "paper",
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        width_rule: str | None = None,
        bias: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        norm_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SE", channels)
        cfg = resolve_preset("SE", PRESETS, preset, rd_divisor=rd_divisor, width_rule=width_rule)
        self.preset = preset
        rule = check_choice("SE", "width_rule", cfg["width_rule"], tuple(WIDTH_RULES))
        hidden = WIDTH_RULES[rule]("SE", channels, rd_ratio, rd_channels, cfg["rd_divisor"])
        self.fc1 = nn.Linear(channels, hidden, bias=bias)  # W₁
        self.norm = norm_or_identity(norm_layer, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels, bias=bias)  # W₂
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate s for ``x``, as B×C×1×1 (no input validation)."""
        check_batch_statistics(
            "SE", self.norm, x.shape[0], "use batch size >= 2, call .eval(), or norm_layer=None"
        )
        return self.excite(x.mean((2, 3)))[:, :, None, None]  # B×C×1×1

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """s from the pooled descriptor z (B×C) as B×C; the map tap sees it as B×C×1×1."""
        s = self.gate(self.fc2(self.act(self.norm(self.fc1(z)))))
        return self.channel_map(s[:, :, None, None]).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def kernel_spec(self) -> kernels.GateSpec:
        """The gate as :func:`attnlab.kernels.fuse` folds it with a block's last BatchNorm."""
        return kernels.GateSpec(
            channel=lambda z, _max: self.excite(z), channel_max=False, spatial=None
        )
