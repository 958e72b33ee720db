"""Convolutional Block Attention Module (Woo et al., "CBAM: Convolutional Block Attention
Module", ECCV 2018, arXiv 1807.06521).

Paper, Eq. 1-3: F' = M_c(F) ⊗ F, F'' = M_s(F') ⊗ F', with
M_c(F) = σ(MLP(AvgPool(F)) + MLP(MaxPool(F))) (one shared MLP C → C/r → C, ReLU, r = 16) and
M_s(F) = σ(f^{7×7}([AvgPool(F); MaxPool(F)])) (pooling across channels).

Where the authors' code differs from the paper, ``preset`` chooses:

- ``"official"`` (default; the authors' code, which produced the published results and the
  28.09M parameters of ResNet-50 + CBAM): spatial pooling order [max, mean] and a BatchNorm
  (eps 1e-5, momentum 0.01) after the 7×7 conv whose weight starts at 0, so M_s starts at 0.5.
- ``"paper"``: [mean, max] as in Eq. 3, no BatchNorm.
- ``"yolo"``: the YOLOv4-tiny attention repositories: r = 8, bias-free MLP, [mean, max], no BN.
- ``"timm"``: timm's ``CbamModule``: bias-free MLP with timm's width rounding (C/r to the
  nearest integer), [mean, max], BatchNorm after the 7×7 conv with PyTorch's defaults
  (momentum 0.1, weight 1 at init).
- ``"timm-light"``: timm's ``LightCbamModule``: one pooled path per gate, ½(avg + max): the
  channel MLP runs once on ½(GAP + GMP), the spatial conv (1 → 1 channels) on ½(mean + max)
  over channels; otherwise as ``"timm"``.

Any argument given explicitly overrides the preset.

Example:
    >>> import torch
    >>> from attnlab.layers import CBAM
    >>> CBAM(256)(torch.randn(2, 256, 13, 17)).shape
    torch.Size([2, 256, 13, 17])
    >>> cbam_paper = CBAM(256, preset="paper", order="parallel")
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .. import kernels
from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_choice,
    check_input,
    check_odd_kernel,
    norm_or_identity,
    reduced_channels,
    resolve_preset,
    timm_reduced_channels,
)
from .maps import MapTap

CHANNEL_POOLS = ("avg", "max", "avgmax")  # avgmax: ½(avg + max), one path (timm's light CBAM)
SPATIAL_POOLS = ("mean", "max")
SPATIAL_POOL_ORDERS = (("mean", "max"), ("max", "mean"), ("avgmax",))
WIDTH_RULES = {"attnlab": reduced_channels, "timm": timm_reduced_channels}
ORDERS = ("channel-spatial", "spatial-channel", "parallel")

# The authors' spatial BN: BatchNorm2d(1, eps=1e-5, momentum=0.01), weight initialised to 0.
OFFICIAL_SPATIAL_NORM = partial(nn.BatchNorm2d, eps=1e-5, momentum=0.01)

PRESETS = {
    "official": dict(
        rd_ratio=1 / 16, bias=True, spatial_pool_order=("max", "mean"), spatial_norm=True
    ),
    "paper": dict(
        rd_ratio=1 / 16, bias=True, spatial_pool_order=("mean", "max"), spatial_norm=False
    ),
    "yolo": dict(
        rd_ratio=1 / 8, bias=False, spatial_pool_order=("mean", "max"), spatial_norm=False
    ),
    "timm": dict(
        rd_ratio=1 / 16,
        bias=False,
        spatial_pool_order=("mean", "max"),
        spatial_norm=True,
        spatial_norm_layer=nn.BatchNorm2d,
        spatial_norm_zero_init=False,
        width_rule="timm",
    ),
    "timm-light": dict(
        rd_ratio=1 / 16,
        bias=False,
        pool_types=("avgmax",),
        spatial_pool_order=("avgmax",),
        spatial_norm=True,
        spatial_norm_layer=nn.BatchNorm2d,
        spatial_norm_zero_init=False,
        width_rule="timm",
    ),
}
# What the presets above leave unsaid: the paper's and the authors' choices.
PRESET_DEFAULTS = dict(
    pool_types=("avg", "max"),
    spatial_norm_layer=OFFICIAL_SPATIAL_NORM,
    spatial_norm_zero_init=True,
    width_rule="attnlab",
)


class ChannelGate(nn.Module):
    """CBAM's channel attention M_c: pooled descriptors through one shared MLP, summed.

    Args:
        channels: input channels C.
        rd_ratio: 1/r (paper: 1/16).
        rd_channels: hidden width given directly; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this (1 = floor).
        pool_types: which global pools feed the MLP: ``("avg", "max")`` (paper), ``("avg",)``
            (= SE) or ``("max",)`` — the paper's Table 1 ablation — or ``("avgmax",)``, one
            path on ½(avg + max) (timm's light CBAM).
        width_rule: ``"attnlab"`` (floor C·rd_ratio, as the authors) or ``"timm"`` (timm's
            rounding, to the nearest integer at divisor 1).
        bias: bias in the MLP's Linear layers (authors' code: True).
        act_layer: hidden activation class (ReLU).
        gate_layer: gating function class (Sigmoid).

    Observable map: ``channel_map`` (kind ``"channel"``), M_c as B×C×1×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        pool_types: tuple[str, ...] = ("avg", "max"),
        bias: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        width_rule: str = "attnlab",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ChannelGate", channels)
        pool_types = tuple(pool_types)
        if not pool_types or len(set(pool_types)) != len(pool_types):
            raise ValueError(
                f"ChannelGate: pool_types must be a non-empty tuple of distinct names from "
                f"{list(CHANNEL_POOLS)}, got {pool_types!r}"
            )
        for pool in pool_types:
            check_choice("ChannelGate", "pool_types entry", pool, CHANNEL_POOLS)
        self.pool_types = pool_types
        rule = check_choice("ChannelGate", "width_rule", width_rule, tuple(WIDTH_RULES))
        hidden = WIDTH_RULES[rule]("ChannelGate", channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels, bias=bias)
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_c(x) as B×C×1×1 (no input validation)."""
        avg = x.mean((2, 3)) if {"avg", "avgmax"} & set(self.pool_types) else None
        mx = x.amax((2, 3)) if self.needs_max else None
        return self.weights(avg, mx)[:, :, None, None]  # B×C×1×1

    def weights(self, avg: torch.Tensor | None, mx: torch.Tensor | None) -> torch.Tensor:
        """M_c from the pooled descriptors (each B×C, as ``pool_types`` asks) as B×C."""
        paths = {"avg": lambda: avg, "max": lambda: mx, "avgmax": lambda: 0.5 * avg + 0.5 * mx}
        pooled = [paths[p]() for p in self.pool_types]
        # One MLP call for all descriptors: P×B×C → P×B×C, then sum over P.
        logits = self.fc2(self.act(self.fc1(torch.stack(pooled)))).sum(0)  # B×C
        return self.channel_map(self.gate(logits)[:, :, None, None]).flatten(1)

    @property
    def needs_max(self) -> bool:
        return bool({"max", "avgmax"} & set(self.pool_types))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)


class SpatialGate(nn.Module):
    """CBAM's spatial attention M_s: channel-wise mean and max maps → k×k conv → σ.

    Args:
        channels: input channels C (used to validate inputs only; the gate has no
            per-channel parameters).
        kernel_size: k of the conv, odd (paper: 7, which beats 3 in its Table 2).
        pool_order: order of the two pooled maps fed to the conv: ``("mean", "max")`` (paper,
            Eq. 3) or ``("max", "mean")`` (authors' code). The order matters once weights are
            trained: a checkpoint from one order is wrong under the other. ``("avgmax",)``:
            one map, ½(mean + max), through a 1 → 1 conv (timm's light CBAM).
        norm_layer: normalisation after the conv, or None (paper). The authors' code uses
            BatchNorm2d(1, eps=1e-5, momentum=0.01), ``OFFICIAL_SPATIAL_NORM``.
        norm_zero_init: initialise the norm's weight to 0 (authors' code), so the gate starts
            at σ(0) = 0.5 everywhere.
        conv_bias: bias on the conv (authors' code and paper: none).
        gate_layer: gating function class (Sigmoid).

    Observable map: ``spatial_map`` (kind ``"spatial"``), M_s as B×1×H×W.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        pool_order: tuple[str, str] = ("mean", "max"),
        norm_layer: type[nn.Module] | None = None,
        norm_zero_init: bool = True,
        conv_bias: bool = False,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SpatialGate", channels)
        self.kernel_size = check_odd_kernel("SpatialGate", "kernel_size", kernel_size)
        pool_order = tuple(pool_order)
        if pool_order not in SPATIAL_POOL_ORDERS:
            raise ValueError(
                f"SpatialGate: pool_order must be ('mean', 'max'), ('max', 'mean') or "
                f"('avgmax',), got {pool_order!r}"
            )
        self.pool_order = pool_order
        self.conv = nn.Conv2d(
            len(pool_order), 1, kernel_size, padding=kernel_size // 2, bias=conv_bias
        )
        self.norm = norm_or_identity(norm_layer, 1)
        if norm_zero_init and getattr(self.norm, "weight", None) is not None:
            nn.init.zeros_(self.norm.weight)
        self.gate = gate_layer()
        self.spatial_map = MapTap("spatial")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s(x) as B×1×H×W (no input validation)."""
        return self.weights(x.mean(1, keepdim=True), x.amax(1, keepdim=True))

    def weights(self, mean: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        """M_s from the channel-pooled maps (each B×1×H×W) as B×1×H×W."""
        self.check_statistics(mean)
        if self.pool_order == ("avgmax",):
            pooled = 0.5 * mean + 0.5 * mx  # B×1×H×W
        else:
            maps = {"mean": mean, "max": mx}
            pooled = torch.cat([maps[p] for p in self.pool_order], dim=1)  # B×2×H×W
        return self.spatial_map(self.gate(self.norm(self.conv(pooled))))  # B×1×H×W

    def check_statistics(self, x: torch.Tensor) -> None:
        """A clear error where a training-mode norm would see one value (B·H·W = 1)."""
        check_batch_statistics(
            "SpatialGate",
            self.norm,
            x.shape[0] * x.shape[2] * x.shape[3],
            "use a batch or map with more than one position, call .eval(), or norm_layer=None",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if kernels.enabled(x, self):
            return kernels.gate(self, x)
        return x * self.attention(x)

    def kernel_spec(self) -> kernels.GateSpec:
        """The gate as the kernels call it (:func:`attnlab.kernels.gate`)."""
        return kernels.GateSpec(channel=None, channel_max=False, spatial=self.weights)


@register_attention(
    "cbam",
    paper="CBAM: Convolutional Block Attention Module (ECCV 2018)",
    arxiv="1807.06521",
    year=2018,
    kind="hybrid",
)
class CBAM(nn.Module):
    """Channel gate then spatial gate (or another arrangement), as in the CBAM paper.

    Args:
        channels: input channels C.
        preset: ``"official"`` (default, authors' code), ``"paper"``, ``"yolo"``, ``"timm"`` or
            ``"timm-light"``; see the module docstring. Arguments left as None take the
            preset's value.
        rd_ratio: 1/r of the channel MLP (preset: 1/16; yolo 1/8).
        rd_channels: hidden width given directly; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this.
        pool_types: channel-gate pools, ``("avg", "max")`` by default (paper Table 1);
            ``("avgmax",)`` in timm-light.
        bias: bias in the channel MLP (preset: True; yolo False).
        kernel_size: spatial conv size, odd (paper: 7).
        spatial_pool_order: ``("mean", "max")`` (paper) or ``("max", "mean")`` (official).
        spatial_norm: BatchNorm after the spatial conv (official: True, zero-initialised).
        order: ``"channel-spatial"`` (default, paper's best), ``"spatial-channel"`` or
            ``"parallel"`` (paper Table 3). The paper gives no formula for "parallel"; here both
            gates are computed from the same input and applied together, F' = F ⊗ M_c(F) ⊗
            M_s(F), which keeps the output on the scale of the sequential arrangements.
        spatial: False for a channel-only CBAM (channel gate with avg and max pooling).
        act_layer: MLP hidden activation class.
        gate_layer: gating function class for both gates.
        spatial_norm_layer: the norm class used when ``spatial_norm`` is on (official:
            momentum 0.01; timm: ``nn.BatchNorm2d``).
        spatial_norm_zero_init: start that norm's weight at 0 (official) or not (timm).
        width_rule: ``"attnlab"`` (floor, as the authors) or ``"timm"`` (timm's rounding).

    Observable maps: ``channel_gate.channel_map`` and ``spatial_gate.spatial_map``.
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "official",
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        pool_types: tuple[str, ...] | None = None,
        bias: bool | None = None,
        kernel_size: int = 7,
        spatial_pool_order: tuple[str, str] | None = None,
        spatial_norm: bool | None = None,
        order: str = "channel-spatial",
        spatial: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        spatial_norm_layer: type[nn.Module] | None = None,
        spatial_norm_zero_init: bool | None = None,
        width_rule: str | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_channels("CBAM", channels)
        presets = {name: {**PRESET_DEFAULTS, **values} for name, values in PRESETS.items()}
        cfg = resolve_preset(
            "CBAM",
            presets,
            preset,
            rd_ratio=rd_ratio,
            bias=bias,
            pool_types=pool_types,
            spatial_pool_order=spatial_pool_order,
            spatial_norm=spatial_norm,
            spatial_norm_layer=spatial_norm_layer,
            spatial_norm_zero_init=spatial_norm_zero_init,
            width_rule=width_rule,
        )
        self.preset = preset
        self.order = check_choice("CBAM", "order", order, ORDERS)
        self.channel_gate = ChannelGate(
            channels,
            rd_ratio=cfg["rd_ratio"],
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            pool_types=cfg["pool_types"],
            bias=cfg["bias"],
            act_layer=act_layer,
            gate_layer=gate_layer,
            width_rule=cfg["width_rule"],
        )
        self.spatial_gate = (
            SpatialGate(
                channels,
                kernel_size=kernel_size,
                pool_order=cfg["spatial_pool_order"],
                norm_layer=cfg["spatial_norm_layer"] if cfg["spatial_norm"] else None,
                norm_zero_init=cfg["spatial_norm_zero_init"],
                gate_layer=gate_layer,
            )
            if spatial
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        if kernels.enabled(x, self):
            return kernels.gate(self, x)
        if self.spatial_gate is None:
            return x * self.channel_gate.attention(x)
        if self.order == "channel-spatial":
            x = x * self.channel_gate.attention(x)
            return x * self.spatial_gate.attention(x)
        if self.order == "spatial-channel":
            x = x * self.spatial_gate.attention(x)
            return x * self.channel_gate.attention(x)
        return x * self.channel_gate.attention(x) * self.spatial_gate.attention(x)

    def kernel_spec(self) -> kernels.GateSpec | None:
        """The gate as the kernels call it (:func:`attnlab.kernels.gate`): channel→spatial
        order with both gates; None otherwise (the channel gate alone gains nothing there)."""
        if self.order != "channel-spatial" or self.spatial_gate is None:
            return None
        channel = self.channel_gate
        return kernels.GateSpec(channel.weights, channel.needs_max, self.spatial_gate.weights)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, preset={self.preset!r}, order={self.order!r}"
