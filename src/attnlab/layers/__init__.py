"""Attention modules for CNNs, one file per family, all following one contract.

``Module(channels, *, options)``; output shape equals input shape; inputs are validated;
attention maps are observable through :class:`MapTap` submodules (see :func:`capture_maps`).
Importing this package registers every module with :func:`attnlab.create_attention`.
"""

from . import fused
from .bam import BAM
from .cbam import CBAM, ChannelGate, SpatialGate
from .coord import CoordAttention
from .danet import ChannelAttention, PositionAttention, position_attention
from .eca import ECA, eca_kernel_size
from .maps import MapTap, capture_maps
from .se import SE

__all__ = [
    "BAM",
    "CBAM",
    "ECA",
    "SE",
    "ChannelAttention",
    "ChannelGate",
    "CoordAttention",
    "MapTap",
    "PositionAttention",
    "SpatialGate",
    "capture_maps",
    "eca_kernel_size",
    "fused",
    "position_attention",
]
