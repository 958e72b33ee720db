"""Global Context block (Cao, Xu, Lin, Wei, Hu, "GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond", ICCV Workshops 2019, arXiv 1904.11492).

Paper, Eq. 3: zᵢ = xᵢ + W_v2 ReLU(LN(W_v1 Σⱼ αⱼ xⱼ)), αⱼ = e^{W_k xⱼ} / Σₘ e^{W_k xₘ}: context
modelling (W_k a 1×1 conv C→1 with bias, softmax over all N_p = H·W positions, attention
pooling), a bottleneck transform (W_v1: C→C/r, LayerNorm over the C/r channels, ReLU,
W_v2: C/r→C, r = 16, all with bias) and fusion by broadcast addition. The paper's ablation also
offers fusion by multiplication, zᵢ = xᵢ · σ(transform(context)) (``fusion=("mul",)``, or both,
``("mul", "add")``: mul then add, as the authors' code orders them), and average pooling instead
of attention pooling (``pooling="avg"``: the SE-like "simplified" context).

Initialisation as in the authors' code: W_k Kaiming-normal (fan_in), bias 0; the last conv of
each transform zero-initialised (weight and bias), so with add fusion the block starts as the
identity. Transforms are written as Linear layers on the pooled context (a 1×1 conv on a 1×1
map); LayerNorm(C/r) on that vector is the authors' LayerNorm([C/r, 1, 1]).

Placement: inside the bottleneck before the residual addition; the paper's best ImageNet /
COCO setting puts GC in stages c3–c5 only (``create_model("resnet50", attn="gc",
attn_stages=(2, 3, 4))``).

Example:
    >>> import torch
    >>> from attnlab.layers import GlobalContext
    >>> gc = GlobalContext(256)           # r = 16 → 16 hidden units
    >>> x = torch.randn(2, 256, 7, 9)
    >>> torch.equal(gc(x), x)             # last conv zero-initialised: identity at init
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input, norm_or_identity, reduced_channels
from .maps import MapTap

FUSIONS = ("add", "mul")


class ContextTransform(nn.Module):
    """The bottleneck transform W_v2 δ(LN(W_v1 c)) on a B×C context vector."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        norm_layer: type[nn.Module] | None,
        act_layer: type[nn.Module],
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)  # W_v1
        self.norm = norm_or_identity(norm_layer, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels)  # W_v2
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(context))))


@register_attention(
    "gc",
    paper="GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond (2019)",
    arxiv="1904.11492",
    year=2019,
    kind="hybrid",
)
class GlobalContext(nn.Module):
    """Global Context block: softmax attention pooling, bottleneck transform, fusion.

    Args:
        channels: input channels C.
        rd_ratio: 1/r of W_v1 (paper: 1/16).
        rd_channels: width of W_v1 given directly; overrides ``rd_ratio``.
        rd_divisor: round the width to a multiple of this (1 = floor, as the authors do).
        pooling: ``"att"`` (default; softmax attention pooling, Eq. 3) or ``"avg"`` (global
            average pooling, the paper's ablation).
        fusion: tuple of ``"add"`` (default) and/or ``"mul"``.
        norm_layer: normalisation in the transform (paper: LayerNorm), or None.
        act_layer: δ (ReLU).
        gate_layer: σ of the multiplicative fusion (Sigmoid).

    Observable maps: ``spatial_map`` (kind ``"spatial"``, α as B×1×H×W, with attention
    pooling) and ``channel_map`` (kind ``"channel"``, the multiplicative gate as B×C×1×1, with
    ``"mul"`` fusion).
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        pooling: str = "att",
        fusion: tuple[str, ...] | str = ("add",),
        norm_layer: type[nn.Module] | None = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("GlobalContext", channels)
        self.pooling = check_choice("GlobalContext", "pooling", pooling, ("att", "avg"))
        fusion = (fusion,) if isinstance(fusion, str) else tuple(fusion)
        if not fusion or len(set(fusion)) != len(fusion):
            raise ValueError(
                f"GlobalContext: fusion must name 'add' and/or 'mul' once each, got {fusion!r}"
            )
        for item in fusion:
            check_choice("GlobalContext", "fusion", item, FUSIONS)
        self.fusion = fusion
        hidden = reduced_channels("GlobalContext", channels, rd_ratio, rd_channels, rd_divisor)
        if pooling == "att":
            self.conv_mask = nn.Conv2d(channels, 1, 1)  # W_k
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
            self.spatial_map = MapTap("spatial")
        if "mul" in fusion:
            self.mul_transform = ContextTransform(channels, hidden, norm_layer, act_layer)
            self.gate = gate_layer()
            self.channel_map = MapTap("channel")
        if "add" in fusion:
            self.add_transform = ContextTransform(channels, hidden, norm_layer, act_layer)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled context Σⱼ αⱼ xⱼ (or the mean) as B×C."""
        if self.pooling == "avg":
            return x.mean((2, 3))
        b, c, h, w = x.shape
        logits = self.conv_mask(x).reshape(b, 1, h * w)  # W_k xⱼ: B×1×N
        alpha = logits.softmax(dim=2)  # αⱼ over the N = H·W positions
        alpha = self.spatial_map(alpha.reshape(b, 1, h, w)).reshape(b, 1, h * w)
        return (x.reshape(b, c, h * w) * alpha).sum(2)  # B×C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        context = self.context(x)  # B×C
        out = x
        if "mul" in self.fusion:
            gate = self.channel_map(self.gate(self.mul_transform(context))[:, :, None, None])
            out = out * gate
        if "add" in self.fusion:
            out = out + self.add_transform(context)[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pooling={self.pooling!r}, fusion={self.fusion!r}"
