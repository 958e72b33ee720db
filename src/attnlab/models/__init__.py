"""Networks that hold attention. Importing this package registers every model."""

from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]
