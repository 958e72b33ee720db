"""YOLOv4-tiny inference (Bochkovskiy et al., arXiv 2004.10934) on images of any size.

``predict`` letterboxes each image to the network's input size, runs the model, decodes the
heads, keeps detections above a confidence threshold, applies class-aware NMS, and maps the
boxes back to each image's own pixels.

Example:
    >>> import torch, attnlab
    >>> from attnlab.detect.infer import predict
    >>> model = attnlab.create_model("yolov4_tiny", num_classes=3, input_size=(64, 64)).eval()
    >>> dets = predict(model, [torch.rand(3, 40, 70)], 64, conf_threshold=0.0)
    >>> sorted(dets[0]), dets[0]["boxes"].shape[-1]
    (['boxes', 'labels', 'scores'], 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .boxes import letterbox, scale_boxes
from .decode import decode_outputs, postprocess


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[Tensor],
    input_size: int,
    *,
    conf_threshold: float = 0.25,
    nms_threshold: float = 0.45,
    max_det: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections of 3×H×W images (any sizes) in their own pixels: letterbox to ``input_size``,
    run the model, decode, filter, NMS, map boxes back and clip them to each image.

    Returns:
        Per image, ``boxes`` (D×4 xyxy), ``scores`` (D), ``labels`` (D), highest score first.
    """
    model.eval()
    device = next(model.parameters()).device
    boxed = [letterbox(image, input_size) for image in images]
    outputs = model(torch.stack([b[0] for b in boxed]).to(device))
    cfg = model.config
    decoded = decode_outputs([o.float() for o in outputs], cfg["anchors"], cfg["anchor_masks"])
    dets = postprocess(decoded.cpu(), conf_threshold, nms_threshold, max_det)
    for det, (_, scale, pad), image in zip(dets, boxed, images, strict=True):
        det["boxes"] = scale_boxes(det["boxes"], scale, pad, tuple(image.shape[-2:]))
    return dets
