"""Style-based Recalibration Module (Lee, Kim, Nam, "SRM: A Style-based Recalibration Module
for Convolutional Neural Networks", ICCV 2019, arXiv 1903.10829).

Paper, Eq. 1-6: style pooling t_c = [μ_c, σ_c] with μ_c = 1/HW Σ x_c and
σ_c = sqrt(1/HW Σ (x_c − μ_c)²); style integration z_c = w_c · t_c (a channel-wise fully
connected layer, CFC: two weights per channel, no bias), z̃_c = BN(z_c), g_c = σ(z̃_c);
x̂_c = g_c · x_c. Parameters: 2C (CFC) + 2C (BN affine) per module.

The authors' code computes σ_c with ``torch.std`` (divides by HW − 1) and the CFC as a grouped
1-D convolution of kernel 2; the paper divides by HW. The default follows the code
(``variance="unbiased"``); ``"biased"`` is Eq. 3 as printed. A 1×1 map has a single position,
so HW − 1 is taken as 1 there (σ_c is 0 either way; ``torch.std`` gives NaN). Where σ_c is 0
(a constant channel, a 1×1 map) its gradient is taken as 0, not the square root's inf · 0 = NaN.

The BN normalises z over the batch: in training it needs batch size ≥ 2 (or ``.eval()``, or
``norm_layer=None``).

Example:
    >>> import torch
    >>> from attnlab.layers import SRM
    >>> srm = SRM(256)                    # CFC 2·256 + BN 2·256
    >>> sum(p.numel() for p in srm.parameters())
    1024
    >>> srm(torch.randn(2, 256, 7, 5)).shape
    torch.Size([2, 256, 7, 5])
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
    safe_sqrt,
)
from .maps import MapTap


@register_attention(
    "srm",
    paper="SRM: A Style-based Recalibration Module for CNNs (ICCV 2019)",
    arxiv="1903.10829",
    year=2019,
    kind="channel",
)
class SRM(nn.Module):
    """SRM: channel gates from each channel's mean and standard deviation.

    Args:
        channels: input channels C.
        variance: ``"unbiased"`` (default; the authors' ``torch.std``) or ``"biased"`` (Eq. 3).
        norm_layer: the normalisation of z (paper: ``nn.BatchNorm1d``), or None.
        gate_layer: σ, the gating function class (paper: Sigmoid).

    Observable map: ``channel_map`` (kind ``"channel"``), g as B×C×1×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        variance: str = "unbiased",
        norm_layer: type[nn.Module] | None = nn.BatchNorm1d,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SRM", channels)
        self.variance = check_choice("SRM", "variance", variance, ("unbiased", "biased"))
        self.cfc = nn.Parameter(torch.zeros(channels, 2))  # w_c = (w_μ, w_σ) per channel
        self.norm = norm_or_identity(norm_layer, channels)
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The CFC's initialisation: PyTorch's default for a kernel-2 grouped Conv1d, as in the
        authors' code (uniform in ±1/sqrt(2))."""
        bound = 2**-0.5
        nn.init.uniform_(self.cfc, -bound, bound)

    def style(self, x: torch.Tensor) -> torch.Tensor:
        """Style pooling t = [μ, σ] as B×C×2."""
        n = x.shape[2] * x.shape[3]
        mean = x.mean((2, 3))  # μ_c: B×C
        divisor = max(n - 1, 1) if self.variance == "unbiased" else n
        var = (x - mean[:, :, None, None]).square().sum((2, 3)) / divisor
        std = safe_sqrt(var)  # σ_c; gradient 0 where a channel is constant
        return torch.stack([mean, std], dim=2)  # B×C×2

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate g for ``x``, as B×C×1×1 (no input validation)."""
        check_batch_statistics(
            "SRM", self.norm, x.shape[0], "use batch size >= 2, call .eval(), or norm_layer=None"
        )
        z = (self.style(x) * self.cfc).sum(2)  # CFC: B×C
        return self.channel_map(self.gate(self.norm(z))[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variance={self.variance!r}"
