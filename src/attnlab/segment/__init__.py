"""Semantic segmentation (DANet, Fu et al., CVPR 2019, arXiv 1809.02983): the multi-output
loss and inference at one or several scales, with flips and sliding windows.

Example:
    >>> import torch
    >>> from attnlab.segment import SegmentationLoss, predict_probs
    >>> model = torch.nn.Conv2d(3, 4, 1)
    >>> probs = predict_probs(model, torch.randn(1, 3, 20, 30), scales=(0.5, 1.0), flip=True)
    >>> tuple(probs.shape), round(float(probs.sum(1).mean()), 4)
    ((1, 4, 20, 30), 1.0)
"""

from .infer import predict_labels, predict_probs, sliding_window_probs, whole_image_probs
from .loss import SegmentationLoss, segmentation_loss

__all__ = [
    "SegmentationLoss",
    "predict_labels",
    "predict_probs",
    "segmentation_loss",
    "sliding_window_probs",
    "whole_image_probs",
]
