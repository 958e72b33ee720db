"""Metrics: localisation of saliency and attention maps (pointing game, energy in mask; the
maps themselves are scored by :func:`attnlab.viz.localization_score`);
detection mAP (VOC mAP@0.5, COCO-style mAP@[.5:.95], per-class AP table; COCO's own numbers
through pycocotools); segmentation
confusion matrix, per-class IoU, mIoU and pixel accuracy.

Example:
    >>> import torch
    >>> from attnlab.metrics import pointing_game
    >>> mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    >>> mask[0, 4:, 4:] = True
    >>> heat = torch.zeros(1, 1, 2, 2)
    >>> heat[0, 0, 1, 1] = 1.0  # the bottom-right cell, upsampled to 8×8
    >>> pointing_game(heat, mask).tolist()
    [1.0]
"""

from .coco import coco_evaluate
from .detection import ap_table, evaluate_detections
from .localization import energy_in_mask, pointing_game
from .segmentation import ConfusionMatrix, confusion_matrix

__all__ = [
    "ConfusionMatrix",
    "ap_table",
    "coco_evaluate",
    "confusion_matrix",
    "energy_in_mask",
    "evaluate_detections",
    "pointing_game",
]
