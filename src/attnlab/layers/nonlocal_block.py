"""Non-local block (Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018,
arXiv 1711.07971), with memory linear in H·W for every pairwise function.

y_i = (1/C(x)) Σ_j f(x_i, x_j) g(x_j);  z_i = BN(W_z y_i) + x_i  (paper Eq. 1 and 6).

θ, φ and g are 1×1 convs C → C/2 (``inter_channels``); W_z is a 1×1 conv C/2 → C followed by a
BatchNorm whose weight starts at 0, so the block is an identity at init (with
``norm_layer=None`` the W_z conv itself starts at 0). The pairwise function f (``mode``):

- ``"embedded_gaussian"`` (default): f = exp(θ_iᵀ φ_j), C = Σ_j f, i.e. softmax_j(θ_iᵀ φ_j);
- ``"gaussian"``: f = exp(x_iᵀ x_j) on the raw features (no θ, φ convs);
- ``"dot_product"``: f = θ_iᵀ φ_j, C = N (the number of positions j);
- ``"concatenation"``: f = ReLU(w_fᵀ [θ_i; φ_j]), C = N, with w_f a bias-free 2·C/2 → 1
  projection (``concat_project``).

Sub-sampling (``sub_sample=True``): 2×2 max pooling (stride 2, ceil mode so any H, W ≥ 1
works) shrinks the positions j to about N/4.

Presets where the authors' code differs from the paper:

============  ==================================  ==================================
preset        θᵀφ before the softmax               sub-sampling pools
============  ==================================  ==================================
"official"    scaled by d^-1/2 (``scale=True``)    x, before the φ and g convs
"paper"       unscaled                             φ(x) and g(x) (Sec. 3.3)
============  ==================================  ==================================

``"official"`` (default) is the authors' released code, which produced the published results
(its ``USE_SCALE`` option is on in the released configurations); mmsegmentation's NL head
scales the same way. The scale applies to the two softmax forms, with d the width of the dot
product (C/2 embedded, C for the raw features). Any argument given explicitly overrides the
preset.

Memory: the softmax forms run on the blocked kernel of DANet's position attention
(:func:`attnlab.layers.position_attention`: queries in blocks, backward recomputing each block
from a per-query log-sum-exp); the dot product is reassociated as θᵀ(φ gᵀ)/N; the
concatenation form sorts b_j = w_φ·φ_j so that Σ_j ReLU(a_i + b_j) g_j becomes prefix sums
over the j with b_j > −a_i. None of them builds the N×N matrix once N² exceeds
``max_block_elements``; ``block_size >= N`` forces the dense formulation (the reference).

Observable map: ``spatial_map`` (kind ``"spatial"``), the weight each position j receives,
averaged over the queries i, B×1×H'×W' (H', W' the sub-sampled size when ``sub_sample``),
computed only while its tap is watched.

Example:
    >>> import torch
    >>> from attnlab.layers import NonLocalBlock
    >>> block = NonLocalBlock(64, sub_sample=True)
    >>> block(torch.randn(2, 64, 15, 9)).shape
    torch.Size([2, 64, 15, 9])
    >>> NonLocalBlock(64, mode="concatenation", preset="paper").mode
    'concatenation'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_attention
from ._ops import (
    check_batch_statistics,
    check_channels,
    check_choice,
    check_input,
    reduced_channels,
    resolve_preset,
)
from .danet import DEFAULT_BLOCK_ELEMENTS, position_attention
from .maps import MapTap

NL_MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
NL_PRESETS = {
    "official": {"scale": True, "pool_input": True},
    "paper": {"scale": False, "pool_input": False},
}


def concatenation_attention(
    a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, *, dense: bool = False
) -> torch.Tensor:
    """y_i = (1/M) Σ_j ReLU(a_i + b_j) g_j without the N×M matrix (unless ``dense``).

    With the b_j sorted in decreasing order, the terms with a_i + b_j > 0 are a prefix of
    length k_i, so y_i = (a_i · G[k_i] + BG[k_i]) / M with G and BG the prefix sums of g_j and
    b_j g_j: O(M log M + N) time and O((N + M)·C) memory.

    Args:
        a: per-query terms w_θ·θ_i, B×N.
        b: per-key terms w_φ·φ_j, B×M.
        g: values, B×C×M.
        dense: build the B×N×M weights instead (the reference formulation).

    Returns:
        y as B×C×N.
    """
    m = b.shape[1]
    if dense:
        weights = torch.relu(a[:, :, None] + b[:, None, :]) / m  # B×N×M
        return torch.bmm(g, weights.transpose(1, 2))  # B×C×N
    b_sorted, order = torch.sort(b, dim=1, descending=True, stable=True)  # B×M
    g_sorted = torch.gather(g, 2, order[:, None, :].expand_as(g))  # B×C×M
    zero = g.new_zeros(g.shape[0], g.shape[1], 1)
    g_prefix = torch.cat([zero, g_sorted.cumsum(2)], dim=2)  # B×C×(M+1)
    bg_prefix = torch.cat([zero, (g_sorted * b_sorted[:, None, :]).cumsum(2)], dim=2)
    # k_i = #{j : b_j > -a_i}; searchsorted needs ascending order: count those <= -a_i.
    ascending = b_sorted.flip(1).contiguous()
    k = m - torch.searchsorted(ascending, (-a).contiguous(), right=True)  # B×N
    index = k[:, None, :].expand(-1, g.shape[1], -1)  # B×C×N
    y = a[:, None, :] * torch.gather(g_prefix, 2, index) + torch.gather(bg_prefix, 2, index)
    return y / m


@torch.no_grad()
def received_attention(
    weights: Callable[[int, int], torch.Tensor], n_queries: int, block_size: int
) -> torch.Tensor:
    """Mean over queries of the weights each key receives, one block of queries at a time.

    Args:
        weights: ``weights(start, stop)`` → the B×(stop−start)×M weights of those queries.
        n_queries: N.
        block_size: queries per block.

    Returns:
        B×M.
    """
    total = None
    for start in range(0, n_queries, block_size):
        part = weights(start, min(start + block_size, n_queries)).sum(1)
        total = part if total is None else total + part
    return total / n_queries


@register_attention(
    "nl",
    paper="Non-local Neural Networks (CVPR 2018)",
    arxiv="1711.07971",
    year=2018,
    kind="self-attention",
)
class NonLocalBlock(nn.Module):
    """Non-local block; memory linear in H·W for all four pairwise functions.

    Args:
        channels: input channels C.
        mode: pairwise function f: ``"embedded_gaussian"`` (default), ``"gaussian"``,
            ``"dot_product"`` or ``"concatenation"``.
        preset: ``"official"`` (default, authors' code) or ``"paper"``; see the module docstring.
        rd_ratio: width of θ, φ, g as a fraction of C (paper: 1/2).
        inter_channels: that width given directly; overrides ``rd_ratio``.
        sub_sample: 2×2 max pooling of the positions j (φ and g).
        scale: divide θᵀφ by √d in the softmax forms; None takes the preset's value.
        pool_input: with ``sub_sample``, pool x before the φ and g convs (authors' code) rather
            than after them (paper); None takes the preset's value.
        norm_layer: normalisation after W_z (paper: BatchNorm2d, weight initialised to 0); None
            leaves it out and initialises W_z to 0 instead.
        block_size: queries per block, or None for blocks of at most ``max_block_elements``
            scores; ``block_size >= N`` forces the dense N×M formulation.
        max_block_elements: score budget per block (default 4M: 16 MiB in float32).
    """

    identity_at_init = True

    def __init__(
        self,
        channels: int,
        *,
        mode: str = "embedded_gaussian",
        preset: str = "official",
        rd_ratio: float = 1 / 2,
        inter_channels: int | None = None,
        sub_sample: bool = False,
        scale: bool | None = None,
        pool_input: bool | None = None,
        norm_layer: Any = nn.BatchNorm2d,
        block_size: int | None = None,
        max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    ) -> None:
        super().__init__()
        owner = "NonLocalBlock"
        self.channels = check_channels(owner, channels)
        self.mode = check_choice(owner, "mode", mode, NL_MODES)
        cfg = resolve_preset(owner, NL_PRESETS, preset, scale=scale, pool_input=pool_input)
        self.preset, self.scale, self.pool_input = preset, cfg["scale"], cfg["pool_input"]
        self.sub_sample = bool(sub_sample)
        if block_size is not None and (isinstance(block_size, bool) or block_size < 1):
            raise ValueError(f"{owner}: block_size must be >= 1, got {block_size!r}")
        if max_block_elements < 1:
            raise ValueError(f"{owner}: max_block_elements must be >= 1, got {max_block_elements}")
        self.block_size, self.max_block_elements = block_size, max_block_elements
        inter = reduced_channels(owner, channels, rd_ratio, inter_channels)
        self.inter_channels = inter
        self.g = nn.Conv2d(channels, inter, 1)
        if mode != "gaussian":
            self.theta = nn.Conv2d(channels, inter, 1)
            self.phi = nn.Conv2d(channels, inter, 1)
        if mode == "concatenation":
            self.concat_project = nn.Conv2d(2 * inter, 1, 1, bias=False)  # w_f
        self.out_conv = nn.Conv2d(inter, channels, 1)  # W_z
        self.norm = nn.Identity() if norm_layer is None else norm_layer(channels)
        target = self.out_conv if norm_layer is None else self.norm
        nn.init.zeros_(target.weight)
        if norm_layer is None:
            nn.init.zeros_(target.bias)
        self.spatial_map = MapTap("spatial")

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t, 2, 2, ceil_mode=True) if self.sub_sample else t

    def _block(self, n_queries: int, n_keys: int) -> int:
        if self.block_size is not None:
            return self.block_size
        return max(1, self.max_block_elements // max(1, n_keys))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        batch, _, height, width = x.shape
        n = height * width
        source = self._pool(x) if self.pool_input else x  # B×C×H'×W' or B×C×H×W
        g = self.g(source)
        g = g if self.pool_input else self._pool(g)  # B×C'×H'×W'
        key_size = g.shape[-2:]
        g = g.flatten(2)  # B×C'×M
        m = g.shape[2]
        block = self._block(n, m)
        observed = self.spatial_map.observed
        received = None
        if self.mode in ("embedded_gaussian", "gaussian"):
            if self.mode == "gaussian":
                theta, phi = x, self._pool(x)
            else:
                theta = self.theta(x)
                phi = self.phi(source)
                phi = phi if self.pool_input else self._pool(phi)
            q = theta.flatten(2).transpose(1, 2)  # B×N×d
            if self.scale:
                q = q * q.shape[-1] ** -0.5
            k = phi.flatten(2)  # B×d×M
            y = position_attention(q, k, g, block_size=block)  # B×C'×N
            if observed:
                received = received_attention(
                    lambda i, j: torch.softmax(torch.bmm(q[:, i:j], k), dim=-1), n, block
                )
        else:
            theta = self.theta(x).flatten(2)  # B×C'×N
            phi = self.phi(source)
            phi = (phi if self.pool_input else self._pool(phi)).flatten(2)  # B×C'×M
            if self.mode == "dot_product":
                if block >= n:
                    weights = torch.bmm(theta.transpose(1, 2), phi) / m  # B×N×M
                    y = torch.bmm(g, weights.transpose(1, 2))
                else:
                    y = torch.bmm(torch.bmm(g, phi.transpose(1, 2)), theta) / m  # B×C'×N
                if observed:
                    received = (theta.mean(2, keepdim=True) * phi).sum(1).detach() / m
            else:
                w = self.concat_project.weight.flatten()  # 2·C'
                a = torch.einsum("c,bcn->bn", w[: self.inter_channels], theta)  # B×N
                b = torch.einsum("c,bcm->bm", w[self.inter_channels :], phi)  # B×M
                y = concatenation_attention(a, b, g, dense=block >= n)
                if observed:
                    received = received_attention(
                        lambda i, j: torch.relu(a[:, i:j, None] + b[:, None, :]) / m, n, block
                    )
        if received is not None:
            self.spatial_map(received.reshape(batch, 1, *key_size))  # B×1×H'×W'
        z = self.out_conv(y.reshape(batch, self.inter_channels, height, width))
        check_batch_statistics(
            "NonLocalBlock",
            self.norm,
            batch * n,
            "call .eval() or pass norm_layer=None (W_z then starts at 0 instead)",
        )
        return x + self.norm(z)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, mode={self.mode!r}, preset={self.preset!r}, "
            f"inter_channels={self.inter_channels}, sub_sample={self.sub_sample}"
        )
