"""Networks that hold attention. Importing this package registers every model."""

from . import external  # noqa: F401  (registers the "tv:" and "timm:" model sources)
from .danet import DANet
from .resnet import BasicBlock, Bottleneck, ResNet
from .seg_heads import AttentionSegNet
from .yolov4_tiny import YOLOv4Tiny

__all__ = ["AttentionSegNet", "BasicBlock", "Bottleneck", "DANet", "ResNet", "YOLOv4Tiny"]
