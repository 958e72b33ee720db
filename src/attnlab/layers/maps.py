"""Observable attention maps: taps inside every module, and a context manager to read them.

Every attention module passes its channel weights and/or spatial map through a
:class:`MapTap`, an identity submodule. Forward hooks on a tap see the map of the last forward
without changing any output, and with no hook attached a tap costs one identity call.

Example:
    >>> import torch
    >>> from attnlab.layers import CBAM, capture_maps
    >>> cbam = CBAM(64)
    >>> with capture_maps(cbam) as maps:
    ...     y = cbam(torch.randn(2, 64, 8, 8))
    >>> sorted(maps)
    ['channel_gate.channel_map', 'spatial_gate.spatial_map']
    >>> maps["spatial_gate.spatial_map"].shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class MapTap(nn.Module):
    """Identity that exposes an attention map to forward hooks.

    Args:
        kind: what the map is: ``"channel"`` (B×C×1×1 weights), ``"spatial"`` (B×1×H×W),
            ``"height"`` / ``"width"`` (Coordinate Attention's B×C×H×1 and B×C×1×W),
            ``"channel-affinity"`` (DANet CAM's B×C×C matrix) or ``"logits"`` variants of these
            where a module exposes pre-sigmoid branch outputs (BAM).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    @property
    def observed(self) -> bool:
        """True when a hook is attached, so modules can skip map-only work otherwise."""
        return bool(self._forward_hooks or self._forward_pre_hooks)

    def forward(self, attention_map: torch.Tensor) -> torch.Tensor:
        return attention_map

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


@contextmanager
def capture_maps(model: nn.Module, *, detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Records every attention map produced inside ``model`` while the context is open.

    Args:
        model: any module containing attnlab attention modules (or one itself).
        detach: store detached tensors (default) so the maps hold no autograd graph.

    Yields:
        A dict filled during forward passes: the tap's qualified module name (e.g.
        ``"layer1.0.attn.spatial_gate.spatial_map"``) → the map of the latest forward.
    """
    maps: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            maps[name] = output.detach() if detach else output

        return hook

    for name, module in model.named_modules():
        if isinstance(module, MapTap):
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
