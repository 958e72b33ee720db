"""attnlab: attention modules for convolutional networks, checked against their papers."""

from . import layers, models
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
from .registry import (
    attention_info,
    create_attention,
    create_model,
    list_attention,
    list_models,
    register_attention,
    register_model,
)
from .surgery import insert_attention
from .weights import load_weights

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
    "create_model",
    "insert_attention",
    "layers",
    "list_attention",
    "list_models",
    "load_weights",
    "models",
    "register_attention",
    "register_model",
]
