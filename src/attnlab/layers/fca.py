"""Multi-spectral channel attention (Qin, Zhang, Wu, Li, "FcaNet: Frequency Channel Attention
Networks", ICCV 2021, arXiv 2012.11879).

Paper, Eq. 6-10 (2-D DCT basis B^{u,v}_{h,w} = cos(πu(h+½)/H) cos(πv(w+½)/W), here with the
authors' orthonormal scale 1/√H·1/√W, ×√2 per non-zero frequency): the channels are split into
n parts X⁰…X^{n−1} of C/n channels; part i is pooled with its own frequency (uᵢ, vᵢ):
Freqⁱ = Σ_{h,w} Xⁱ_{:,h,w} B^{uᵢ,vᵢ}_{h,w}; Freq = cat(Freq⁰…Freq^{n−1}) (C values);
ms_att = σ(fc(Freq)), fc = Linear C→C/r, ReLU, Linear C/r→C (no biases, r = 16, as SE);
y = x · ms_att. (0, 0) alone is GAP up to a scale: SE is the special case n = 1.

Frequency selection (``freq_sel``): the authors' ``"top{n}"`` (frequencies ranked by
single-frequency ImageNet accuracy on a 7×7 grid; default ``"top16"``), ``"low{n}"`` (lowest
first) and ``"bot{n}"`` (worst first), n ∈ {1, 2, 4, 8, 16, 32}; C must be divisible by n.

Map sizes (the choice the 7×7 grid leaves open), as presets:

- ``"official"`` (default; the authors' code, cfzd/FcaNet): the basis is built once on a
  ``dct_size`` grid (default 7×7) with frequencies scaled by dct_size // 7 (so (2, 2) on 14×14
  is (1, 1) on 7×7); an input of another size is first average-pooled adaptively to that grid.
  FcaNet-50 uses dct_size 56, 28, 14, 7 in stages 1-4 (its 224×224 maps, so no pooling there):
  ``attn_stage_kwargs=[{"dct_size": s} for s in (56, 28, 14, 7)]``.
- ``"native"``: no pooling; the basis is evaluated on the input's own H×W at frequency
  (u·H/7, v·W/7), which is the authors' scaling wherever H and W are multiples of 7 (identical
  to ``"official"`` with dct_size = H there) and continues it to every other size.

Both presets compute their filters from the input's size with tensor operations only, so the
module exports to ONNX with symbolic height and width (no adaptive pooling operator). Adaptive
average pooling is linear and the basis separable (B^{u,v} = rowᵤ ⊗ col_v), so pooling to the
grid and then filtering equals filtering the input with (rowᵤ Pₕ) ⊗ (col_v P_w), where P
(grid × input) averages each adaptive bin [⌊iN/n⌋, ⌈(i+1)N/n⌉) (P = I at the grid's own size,
so the basis is then exactly the grid's). The native basis cos(π (uH/7)(h+½)/H) is
cos(π u (h+½)/7): only its scale 1/√H depends on H.

Example:
    >>> import torch
    >>> from attnlab.layers import MultiSpectralAttention
    >>> fca = MultiSpectralAttention(256)   # 16 frequencies, 16 channels each
    >>> sum(p.numel() for p in fca.parameters())   # 2·256·16: no biases
    8192
    >>> fca(torch.randn(2, 256, 14, 9)).shape
    torch.Size([2, 256, 14, 9])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register_attention
from ._ops import check_channels, check_input, reduced_channels, resolve_preset
from .maps import MapTap

# The authors' frequency rankings on the 7×7 grid: (u along H, v along W), best first.
FREQ_TABLES = {
    "top": (
        "0 0 6 0 0 1 1 4 5 1 3 0 0 0 3 2 4 6 3 5 5 2 6 5 5 3 3 4 2 2 6 1",
        "0 1 0 5 2 0 2 0 0 6 0 4 6 3 5 2 6 3 3 3 5 1 1 2 4 2 1 1 3 0 5 3",
    ),
    "low": (
        "0 0 1 1 0 2 2 1 2 0 3 4 0 1 3 0 1 2 3 4 5 0 1 2 3 4 5 6 1 2 3 4",
        "0 1 0 1 2 0 1 2 2 3 0 0 4 3 1 5 4 3 2 1 0 6 5 4 3 2 1 0 6 5 4 3",
    ),
    "bot": (
        "6 1 3 3 2 4 1 2 4 4 5 1 4 6 2 5 6 1 6 2 2 4 3 3 5 5 6 2 5 5 3 6",
        "6 4 4 6 6 3 1 4 4 5 6 5 2 2 5 1 4 3 5 0 3 1 1 2 4 2 1 1 5 3 3 3",
    ),
}
PRESETS = {"official": dict(size_mode="pool"), "native": dict(size_mode="native")}


def frequencies(freq_sel: str) -> list[tuple[int, int]]:
    """The (u, v) pairs on the 7×7 grid for ``"top16"``, ``"low4"``, ``"bot1"``, …"""
    method, count = freq_sel[:3], freq_sel[3:]
    if method not in FREQ_TABLES or count not in ("1", "2", "4", "8", "16", "32"):
        raise ValueError(
            "MultiSpectralAttention: freq_sel must be 'top', 'low' or 'bot' followed by "
            f"1, 2, 4, 8, 16 or 32 (e.g. 'top16'), got {freq_sel!r}"
        )
    us, vs = (list(map(int, row.split()))[: int(count)] for row in FREQ_TABLES[method])
    return list(zip(us, vs, strict=True))


def dct_basis_1d(freq: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal DCT-II rows: cos(π f (t + ½) / N) / √N, ×√2 where f ≠ 0, as F×N."""
    t = torch.arange(size, dtype=dtype, device=freq.device) + 0.5
    basis = torch.cos(math.pi * freq[:, None] * t[None, :] / size) / math.sqrt(size)
    return torch.where(freq[:, None] == 0, basis, basis * math.sqrt(2))


def native_basis_1d(freq: torch.Tensor, size: int) -> torch.Tensor:
    """F×N rows at frequency f·N/7 on N points: cos(π f (t + ½) / 7) / √N, ×√2 where f ≠ 0.

    ``size`` may be a traced size: every step is a tensor operation, so exports keep N symbolic.
    """
    t = torch.arange(size, dtype=freq.dtype, device=freq.device) + 0.5  # N
    length = torch.ones_like(t).sum()  # N as a tensor
    basis = torch.cos(math.pi * freq[:, None] * t[None, :] / 7) * length.rsqrt()
    return torch.where(freq[:, None] == 0, basis, basis * math.sqrt(2))


def pooling_matrix(size: int, bins: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """bins×N matrix of adaptive average pooling along one axis of length N = ``size``.

    Row i averages the points [⌊iN/n⌋, ⌈(i+1)N/n⌉) (n = ``bins``), the bins of
    :func:`torch.nn.functional.adaptive_avg_pool2d`; built from ranges, so a traced ``size``
    stays symbolic in an export.
    """
    i = torch.arange(bins, device=device)
    start = torch.div(i * size, bins, rounding_mode="floor")  # n
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")  # n, a ceiling
    t = torch.arange(size, device=device)
    inside = (t[None, :] >= start[:, None]) & (t[None, :] < end[:, None])  # n×N
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


@register_attention(
    "fca",
    paper="FcaNet: Frequency Channel Attention Networks (ICCV 2021)",
    arxiv="2012.11879",
    year=2021,
    kind="channel",
)
class MultiSpectralAttention(nn.Module):
    """FcaNet's multi-spectral channel attention: DCT pooling per channel part, then SE's MLP.

    Args:
        channels: input channels C (divisible by the number of frequencies).
        preset: ``"official"`` (default) or ``"native"``: how maps other than the DCT grid
            are handled (see the module docstring).
        size_mode: ``"pool"`` or ``"native"``; overrides the preset.
        freq_sel: frequency selection (``"top16"``: the authors' default).
        dct_size: the DCT grid of ``"pool"`` mode, an int or (H, W) (default 7).
        rd_ratio: 1/r (default 1/16).
        rd_channels: hidden width given directly; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this (1 = floor).
        bias: biases in the two Linear layers (authors: False).
        act_layer: the MLP's ReLU.
        gate_layer: σ (Sigmoid).

    Observable map: ``channel_map`` (kind ``"channel"``), ms_att as B×C×1×1.
    """

    def __init__(
        self,
        channels: int,
        *,
        preset: str = "official",
        size_mode: str | None = None,
        freq_sel: str = "top16",
        dct_size: int | tuple[int, int] = 7,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        bias: bool = False,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        owner = "MultiSpectralAttention"
        self.channels = check_channels(owner, channels)
        cfg = resolve_preset(owner, PRESETS, preset, size_mode=size_mode)
        if cfg["size_mode"] not in ("pool", "native"):
            raise ValueError(f"{owner}: size_mode must be 'pool' or 'native', got {size_mode!r}")
        self.preset, self.size_mode, self.freq_sel = preset, cfg["size_mode"], freq_sel
        self.freqs = frequencies(freq_sel)
        if channels % len(self.freqs):
            raise ValueError(
                f"{owner}: channels must be divisible by the number of frequencies; got "
                f"channels={channels} with freq_sel={freq_sel!r} ({len(self.freqs)} frequencies)"
            )
        size = (dct_size, dct_size) if isinstance(dct_size, int) else tuple(dct_size)
        valid = [not isinstance(s, bool) and isinstance(s, int) and s >= 1 for s in size]
        if len(size) != 2 or not all(valid):
            raise ValueError(
                f"{owner}: dct_size must be a positive int or (H, W), got {dct_size!r}"
            )
        self.dct_size = size
        # The authors' scaling: frequency indices times dct_size // 7 (integers).
        scaled = [(u * (size[0] // 7), v * (size[1] // 7)) for u, v in self.freqs]
        dtype = torch.get_default_dtype()
        u, v = (torch.tensor([f[k] for f in self.freqs], dtype=dtype) for k in (0, 1))
        scaled_u, scaled_v = (torch.tensor([f[k] for f in scaled], dtype=dtype) for k in (0, 1))
        # Derived from the options, so not saved: state dicts hold the learned weights only.
        # The basis is separable, B^{u,v} = rowᵤ ⊗ col_v: its 1-D factors are kept.
        self.register_buffer("freq_u", u, persistent=False)  # n, along H
        self.register_buffer("freq_v", v, persistent=False)  # n, along W
        self.register_buffer("dct_rows", dct_basis_1d(scaled_u, size[0], dtype), persistent=False)
        self.register_buffer("dct_cols", dct_basis_1d(scaled_v, size[1], dtype), persistent=False)
        hidden = reduced_channels(owner, channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels, bias=bias)
        self.gate = gate_layer()
        self.channel_map = MapTap("channel")

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Freq (B×C): each channel part pooled with its DCT basis function."""
        h, w = x.shape[2], x.shape[3]
        if self.size_mode == "native":
            # Frequencies continued from the 7×7 grid: u·H/7 along H, v·W/7 along W.
            rows = native_basis_1d(self.freq_u.to(x.dtype), h)  # n×H
            cols = native_basis_1d(self.freq_v.to(x.dtype), w)  # n×W
        else:
            # Adaptive pooling to the grid folded into the basis: rowᵤ Pₕ and col_v P_w (exact
            # at the grid's own size, where both P are identities).
            pool_h = pooling_matrix(h, self.dct_size[0], x.dtype, x.device)  # dct_h×H
            pool_w = pooling_matrix(w, self.dct_size[1], x.dtype, x.device)  # dct_w×W
            rows = self.dct_rows.to(x.dtype) @ pool_h  # n×H
            cols = self.dct_cols.to(x.dtype) @ pool_w  # n×W
        basis = rows[:, None, :, None] * cols[:, None, None, :]  # n×1×H×W
        parts = x.unflatten(1, (len(self.freqs), -1))  # B×n×C/n×H×W
        return (parts * basis).sum((3, 4)).flatten(1)  # B×C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        s = self.gate(self.fc2(self.act(self.fc1(self.spectrum(x)))))  # B×C
        return x * self.channel_map(s[:, :, None, None])

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, preset={self.preset!r}, freq_sel={self.freq_sel!r}, "
            f"dct_size={self.dct_size}"
        )
