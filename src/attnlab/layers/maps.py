"""Observable attention maps: taps inside every module, and a context manager to read them.

Every attention module passes its channel weights and/or spatial map through a
:class:`MapTap`, an identity submodule. Forward hooks on a tap see the map of the last forward
without changing any output (:meth:`MapTap.watch`), and unwatched a tap costs one identity call.

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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class MapTap(nn.Module):
    """Identity that exposes an attention map to forward hooks.

    Args:
        kind: what the map is: ``"channel"`` (B×C×1×1 weights), ``"spatial"`` (B×1×H×W),
            ``"height"`` / ``"width"`` (Coordinate Attention's B×C×H×1 and B×C×1×W),
            ``"channel-affinity"`` (DANet CAM's B×C×C matrix), ``"logits"`` variants of these
            where a module exposes pre-sigmoid branch outputs (BAM), or a module's own kind for
            other shapes (its docstring says which: e.g. SimAM's B×C×H×W ``"neuron"`` weights).

    Observe a tap with :meth:`watch` (or :func:`capture_maps`, which uses it): a module may
    skip work that only produces its map (PAM's per-position attention) while nobody watches.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.watchers = 0

    @property
    def observed(self) -> bool:
        """True while a watcher added by :meth:`watch` is attached."""
        return self.watchers > 0

    def watch(self, hook: Callable[[nn.Module, tuple, torch.Tensor], None]) -> TapWatch:
        """Calls ``hook(tap, inputs, map)`` after every forward until the handle is removed.

        Returns:
            A handle whose ``remove()`` detaches the hook.
        """
        self.watchers += 1
        return TapWatch(self, self.register_forward_hook(hook))

    def forward(self, attention_map: torch.Tensor) -> torch.Tensor:
        return attention_map

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class TapWatch:
    """The handle :meth:`MapTap.watch` returns; ``remove()`` detaches its hook once."""

    def __init__(self, tap: MapTap, handle: Any) -> None:
        self.tap, self.handle = tap, handle

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
            self.tap.watchers -= 1


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
            handles.append(module.watch(make_hook(name)))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
