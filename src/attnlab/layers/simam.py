"""SimAM, a parameter-free attention module (Yang, Zhang, Li, Xie, "SimAM: A Simple,
Parameter-Free Attention Module for Convolutional Neural Networks", ICML 2021; no arXiv
version, PMLR 139:11863-11874).

Paper, Eq. 5-6: for each channel, over its M = H·W positions, μ̂ = 1/M Σ xᵢ and
σ̂² = 1/M Σ (xᵢ − μ̂)²; the minimal energy of neuron t is e*ₜ = 4(σ̂² + λ) / ((t − μ̂)² + 2σ̂² + 2λ),
and the output is X̃ = σ(1/E) ⊙ X (Eq. 6), σ the sigmoid, λ = 1e-4. The authors' code writes
1/e* = (t − μ̂)² / (4(σ̂² + λ)) + 0.5 (the same expression rearranged) and divides the sum of
squares by n = H·W − 1, the number of *other* neurons in the channel (the paper's M − 1 in
Eq. 2). The default follows the code; ``variance="biased"`` divides by H·W as Eq. 5 prints.

A 1×1 map has no other neuron: n is taken as 1 there (the numerator is 0 either way, so every
gate is σ(0.5)).

Example:
    >>> import torch
    >>> from attnlab.layers import SimAM
    >>> simam = SimAM(16)                 # no parameters
    >>> sum(p.numel() for p in simam.parameters())
    0
    >>> simam(torch.randn(2, 16, 5, 7)).shape
    torch.Size([2, 16, 5, 7])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_choice, check_input
from .maps import MapTap


@register_attention(
    "simam",
    paper="SimAM: A Simple, Parameter-Free Attention Module for CNNs (ICML 2021)",
    arxiv="none (ICML 2021, PMLR 139)",
    year=2021,
    kind="hybrid",
)
class SimAM(nn.Module):
    """SimAM: per-neuron weights from the closed-form minimal energy, no parameters.

    Args:
        channels: input channels C (checked against the input; SimAM has no weights).
        e_lambda: λ, the energy's regulariser (paper: 1e-4).
        variance: ``"unbiased"`` (default; the authors' code: sum of squares / (H·W − 1)) or
            ``"biased"`` (Eq. 5 as printed: / H·W).
        gate_layer: σ, the gating function class (paper: Sigmoid).

    Observable map: ``neuron_map`` (kind ``"neuron"``), σ(1/E) as B×C×H×W.
    """

    def __init__(
        self,
        channels: int,
        *,
        e_lambda: float = 1e-4,
        variance: str = "unbiased",
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.channels = check_channels("SimAM", channels)
        if isinstance(e_lambda, bool) or not isinstance(e_lambda, (int, float)) or e_lambda <= 0:
            raise ValueError(f"SimAM: e_lambda must be a positive number, got {e_lambda!r}")
        self.e_lambda = float(e_lambda)
        self.variance = check_choice("SimAM", "variance", variance, ("unbiased", "biased"))
        self.gate = gate_layer()
        self.neuron_map = MapTap("neuron")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """σ(1/E) for ``x``, as B×C×H×W (no input validation)."""
        positions = x.shape[2] * x.shape[3]
        n = max(positions - 1, 1) if self.variance == "unbiased" else positions
        d = (x - x.mean((2, 3), keepdim=True)).square()  # (t − μ̂)²: B×C×H×W
        var = d.sum((2, 3), keepdim=True) / n  # σ̂²: B×C×1×1
        inverse_energy = d / (4 * (var + self.e_lambda)) + 0.5  # 1/e*
        return self.neuron_map(self.gate(inverse_energy))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda}, variance={self.variance!r}"
