"""How inserted attention joins a network it was not built into: an identity-at-insertion blend
and the forward hooks that apply it, so the network's own parameter names never change.

Example:
    >>> import torch, attnlab
    >>> from attnlab.surgery.blend import AttentionBlend
    >>> blend = AttentionBlend(attnlab.create_attention("se", 8))
    >>> x = torch.randn(2, 8, 4, 4)
    >>> bool(torch.equal(blend(x), x))  # α = 0: the input, unchanged
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AttentionBlend(nn.Module):
    """y = b + α·(A(x) − b) with α = 0 at init, b = x (or a given ``base``).

    A multiplicative gate such as SE's is not an identity at init (σ(·) ≈ 0.5 halves the
    branch), so the blend makes the insertion an identity that training moves away from; at
    α = 1 the module is A alone. With ``base`` (the output of a module being replaced, e.g. a
    block's own SE) the blend starts from that module's output and moves towards A's.

    Args:
        attention: the attention module A.
    """

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        base = x if base is None else base
        return base + self.alpha * (self.attention(x) - base)


def _as_channels_first(x: torch.Tensor, channels: int, path: str) -> tuple[torch.Tensor, bool]:
    """(NCHW view of x, whether it was channels-last NHWC) for a 4-D map of ``channels``."""
    if x.dim() == 4 and x.shape[1] == channels:
        return x, False
    if x.dim() == 4 and x.shape[-1] == channels:  # channels-last blocks (ConvNeXt's MLP)
        return x.permute(0, 3, 1, 2), True  # (N, H, W, C) -> (N, C, H, W)
    raise ValueError(
        f"insert_attention: the tensor at {path!r} has shape {tuple(x.shape)}, not a "
        f"(N, {channels}, H, W) or (N, H, W, {channels}) map; pass channels=… or another path"
    )


def _apply(owner: nn.Module, name: str, x: Any, channels: int, path: str, base=None) -> Any:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"insert_attention: {path} carries {type(x).__name__}, but attention needs a tensor"
        )
    module = getattr(owner, name)
    x, channels_last = _as_channels_first(x, channels, path)
    if base is not None:
        base, _ = _as_channels_first(base, channels, path)
        y = module(x, base) if isinstance(module, AttentionBlend) else module(x)
    else:
        y = module(x)
    return y.permute(0, 2, 3, 1) if channels_last else y  # back to (N, H, W, C)


class ApplyToOutput:
    """Forward hook replacing a module's output y by ``getattr(owner, name)(y)``."""

    def __init__(self, owner: nn.Module, name: str, channels: int, path: str) -> None:
        self.owner, self.name, self.channels, self.path = owner, name, channels, path

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        return _apply(self.owner, self.name, output, self.channels, self.path)


class ApplyToInput:
    """Forward pre-hook replacing a module's input x by ``getattr(owner, name)(x)``: attention
    before a parameter-free module that ends a residual branch (drop path, stochastic depth)."""

    def __init__(self, owner: nn.Module, name: str, channels: int, path: str) -> None:
        self.owner, self.name, self.channels, self.path = owner, name, channels, path

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple:
        if len(inputs) != 1:
            raise TypeError(
                f"insert_attention: {self.path} takes {len(inputs)} inputs; attention before "
                "it needs exactly one"
            )
        return (_apply(self.owner, self.name, inputs[0], self.channels, self.path),)


class ReplaceOutput:
    """Forward hook for replacing a module (a block's own SE): its output s becomes
    ``blend(x, s)`` = s + α·(A(x) − s), x being the module's input; without a blend, A(x)."""

    def __init__(self, owner: nn.Module, name: str, channels: int, path: str) -> None:
        self.owner, self.name, self.channels, self.path = owner, name, channels, path

    def __call__(self, module: nn.Module, inputs: tuple, output: Any) -> torch.Tensor:
        return _apply(self.owner, self.name, inputs[0], self.channels, self.path, base=output)
