"""Networks that hold attention. Importing this package registers every model."""

from .danet import DANet
from .resnet import BasicBlock, Bottleneck, ResNet
from .yolov4_tiny import YOLOv4Tiny

__all__ = ["BasicBlock", "Bottleneck", "DANet", "ResNet", "YOLOv4Tiny"]
