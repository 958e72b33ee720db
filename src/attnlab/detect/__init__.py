"""Object detection tools: box ops and NMS, decoding of YOLO heads, the YOLO loss.

Example:
    >>> import torch, attnlab
    >>> from attnlab.detect import YoloLoss, decode_outputs, postprocess
    >>> model = attnlab.create_model("yolov4_tiny", num_classes=3).eval()
    >>> with torch.no_grad():
    ...     outputs = model(torch.rand(1, 3, 64, 64))
    >>> cfg = model.config
    >>> dets = postprocess(decode_outputs(outputs, cfg["anchors"], cfg["anchor_masks"]))
    >>> sorted(dets[0])
    ['boxes', 'labels', 'scores']
"""

from .boxes import (
    batched_nms,
    box_iou,
    ciou,
    letterbox,
    nms,
    scale_boxes,
    wh_iou,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from .decode import decode_outputs, postprocess
from .loss import YoloLoss

__all__ = [
    "YoloLoss",
    "batched_nms",
    "box_iou",
    "ciou",
    "decode_outputs",
    "letterbox",
    "nms",
    "postprocess",
    "scale_boxes",
    "wh_iou",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]
