"""attnlab: attention modules for convolutional networks, checked against their papers."""

from . import layers
from .layers import (
    BAM,
    CBAM,
    ECA,
    SE,
    ChannelAttention,
    ChannelGate,
    CoordAttention,
    PositionAttention,
    SpatialGate,
    capture_maps,
)
from .registry import attention_info, create_attention, list_attention, register_attention

__version__ = "0.1.0"

__all__ = [
    "BAM",
    "CBAM",
    "ECA",
    "SE",
    "ChannelAttention",
    "ChannelGate",
    "CoordAttention",
    "PositionAttention",
    "SpatialGate",
    "__version__",
    "attention_info",
    "capture_maps",
    "create_attention",
    "layers",
    "list_attention",
    "register_attention",
]
