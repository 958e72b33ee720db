"""Selective Kernel convolution (Li, Wang, Hu, Yang, "Selective Kernel Networks", CVPR 2019,
arXiv 1903.06586).

Paper, Eq. 1-6, with M branches: Split: U_m = F_m(X), F_m a 3×3 grouped convolution (G groups)
with dilation m (the paper replaces the 5×5 kernel by a 3×3 with dilation 2), BN and ReLU.
Fuse: U = Σ_m U_m; s = F_gp(U) (GAP, C values); z = δ(B(W s)), W ∈ R^{d×C}, d = max(C/r, L).
Select: a_m = softmax over m of (A_m z), A_m ∈ R^{C×d}; V = Σ_m a_m · U_m.

Defaults are the paper's SKNet-50 setting: M = 2, G = 32, r = 16, L = 32; no biases (W and the
A_m are one 1×1 conv d → M·C here). SK replaces a block's 3×3 convolution, so it may change
width and stride (``out_channels``, ``stride``); as an attention module it is C → C, stride 1.

In a ResNet it is a block option: ``create_model("resnet50", block_conv="sk", groups=32,
width_per_group=4)`` is SKNet-50, the paper's ResNeXt-50 (32×4d) with every bottleneck's 3×3
group convolution replaced by an SK unit (stride in the SK unit; the SK unit's BN+ReLU per
branch replaces the block's bn2): 27,479,784 parameters, the paper's 27.5M — the same layout
as timm's ``skresnext50_32x4d``.

Example:
    >>> import torch
    >>> from attnlab.layers import SelectiveKernel
    >>> sk = SelectiveKernel(64)          # G = 32, d = max(64/16, 32) = 32
    >>> sk(torch.randn(2, 64, 13, 17)).shape
    torch.Size([2, 64, 13, 17])
    >>> SelectiveKernel(64, out_channels=128, stride=2)(torch.randn(2, 64, 8, 8)).shape
    torch.Size([2, 128, 4, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_input,
    norm_or_identity,
    reduced_channels,
)
from .maps import MapTap

ADVICE = "use batch size >= 2, call .eval(), or norm_layer=None"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"SelectiveKernel: {name} must be a positive int, got {value!r}")
    return value


@register_attention(
    "sk",
    paper="Selective Kernel Networks (CVPR 2019)",
    arxiv="1903.06586",
    year=2019,
    kind="channel",
)
class SelectiveKernel(nn.Module):
    """Selective Kernel unit: M dilated 3×3 branches mixed by a softmax over branches.

    Args:
        channels: input channels.
        out_channels: output channels C (default: ``channels``).
        stride: stride of every branch (1 as an attention module).
        dilation: base dilation; branch m (0-based) uses dilation·(m + 1).
        branches: M (paper 2).
        groups: G of every branch's convolution (paper 32), capped at C.
        rd_ratio: 1/r (paper 1/16).
        rd_channels: d given directly; overrides ``rd_ratio`` and ``min_channels``.
        rd_divisor: round C/r to a multiple of this (1 = floor).
        min_channels: L, the lower bound on d (paper 32).
        act_layer: δ (ReLU), in the branches and in the fuse step.
        norm_layer: B (BatchNorm2d), in the branches and in the fuse step, or None.

    Observable map: ``selection_map`` (kind ``"branch-channel"``), the weights a as
    B×M×C×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        out_channels: int | None = None,
        stride: int = 1,
        dilation: int = 1,
        branches: int = 2,
        groups: int = 32,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        min_channels: int = 32,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SelectiveKernel", channels)
        out = channels if out_channels is None else out_channels
        out = _positive_int("out_channels", out)
        stride, dilation = _positive_int("stride", stride), _positive_int("dilation", dilation)
        self.branches = _positive_int("branches", branches)
        self.groups = min(_positive_int("groups", groups), channels, out)
        if channels % self.groups or out % self.groups:
            raise ValueError(
                f"SelectiveKernel: channels ({channels}) and out_channels ({out}) must be "
                f"divisible by groups ({self.groups})"
            )
        self.out_channels, self.stride = out, stride
        self.paths = nn.ModuleList()
        for m in range(self.branches):
            d = dilation * (m + 1)
            conv = nn.Conv2d(channels, out, 3, stride, d, d, groups=self.groups, bias=False)
            self.paths.append(nn.Sequential(conv, norm_or_identity(norm_layer, out), act_layer()))
        hidden = reduced_channels(
            "SelectiveKernel", out, rd_ratio, rd_channels, rd_divisor, min_channels
        )
        self.fc_reduce = nn.Conv2d(out, hidden, 1, bias=False)  # W
        self.norm = norm_or_identity(norm_layer, hidden)  # B
        self.act = act_layer()  # δ
        self.fc_select = nn.Conv2d(hidden, out * self.branches, 1, bias=False)  # A_1…A_M
        self.selection_map = MapTap("branch-channel")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        b = x.shape[0]
        u_m = []
        for path in self.paths:
            out_h = (x.shape[2] - 1) // self.stride + 1
            out_w = (x.shape[3] - 1) // self.stride + 1
            check_batch_statistics("SelectiveKernel", path[1], b * out_h * out_w, ADVICE)
            u_m.append(path(x))
        u = torch.stack(u_m, dim=1)  # B×M×C×H×W
        s = u.sum(1).mean((2, 3), keepdim=True)  # B×C×1×1
        check_batch_statistics("SelectiveKernel", self.norm, b, ADVICE)
        z = self.act(self.norm(self.fc_reduce(s)))  # B×d×1×1
        logits = self.fc_select(z).reshape(b, self.branches, self.out_channels, 1)  # B×M×C×1
        a = self.selection_map(logits.softmax(dim=1))
        return (u * a[..., None]).sum(1)  # B×C×H×W

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, out_channels={self.out_channels}, stride={self.stride}, "
            f"branches={self.branches}, groups={self.groups}"
        )
