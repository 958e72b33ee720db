"""Attention modules for CNNs, one file per family, all following one contract.

``Module(channels, *, options)``; output shape equals input shape; inputs are validated;
attention maps are observable through :class:`MapTap` submodules (see :func:`capture_maps`).
Importing this package registers every module with :func:`attnlab.create_attention`.
"""

from .bam import BAM
from .cbam import CBAM, ChannelGate, SpatialGate
from .coord import CoordAttention
from .criss_cross import CrissCrossAttention, criss_cross_attention
from .danet import ChannelAttention, PositionAttention, position_attention
from .double_attention import DoubleAttention
from .eca import ECA, eca_kernel_size
from .efficient_attention import EfficientAttention
from .ela import ELA
from .ema import EMA
from .ese import EffectiveSE
from .fca import MultiSpectralAttention
from .gam import GAM
from .gather_excite import GatherExcite
from .gc import GlobalContext
from .maps import MapTap, capture_maps
from .nonlocal_block import NonLocalBlock
from .polarized import PolarizedSelfAttention
from .scse import SCSE
from .se import SE
from .sge import SpatialGroupEnhance
from .shuffle import ShuffleAttention
from .simam import SimAM
from .sk import SelectiveKernel
from .srm import SRM
from .triplet import TripletAttention

__all__ = [
    "BAM",
    "CBAM",
    "ECA",
    "ELA",
    "EMA",
    "GAM",
    "SE",
    "SCSE",
    "SRM",
    "ChannelAttention",
    "ChannelGate",
    "CoordAttention",
    "CrissCrossAttention",
    "DoubleAttention",
    "EffectiveSE",
    "EfficientAttention",
    "GatherExcite",
    "GlobalContext",
    "MapTap",
    "MultiSpectralAttention",
    "NonLocalBlock",
    "PolarizedSelfAttention",
    "PositionAttention",
    "SelectiveKernel",
    "ShuffleAttention",
    "SimAM",
    "SpatialGate",
    "SpatialGroupEnhance",
    "TripletAttention",
    "capture_maps",
    "criss_cross_attention",
    "eca_kernel_size",
    "position_attention",
]
