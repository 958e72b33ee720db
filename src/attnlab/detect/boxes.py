"""Box operations: formats, IoU, CIoU, batched NMS, letterbox.

Boxes are ``xyxy`` (x1, y1, x2, y2; x2 > x1, y2 > y1) in pixels unless a name says ``xywh``
(centre x, centre y, width, height). Format conversion, pairwise IoU and (batched) greedy NMS
are torchvision's (:func:`torchvision.ops.box_convert`, :func:`~torchvision.ops.box_iou`,
:func:`~torchvision.ops.nms`, :func:`~torchvision.ops.batched_nms`: compiled kernels, the same
greedy rule: a box is dropped when its IoU with a kept, higher-scoring box of its class is
> the threshold; equal scores keep the lower index first). CIoU is from Zheng et al.,
"Distance-IoU Loss: Faster and Better Learning for Bounding Box Regression", AAAI 2020, arXiv
1911.08287: CIoU = IoU − ρ²(b, b_gt)/c² − αv with v = 4/π² (atan(w_gt/h_gt) − atan(w/h))² and
α = v / (1 − IoU + v). It stays here although 1 − :func:`ciou` equals torchvision's
``complete_box_iou_loss`` (tested): that one finds the intersections by boolean-mask indexing, a
data-dependent scatter (a host synchronisation on CUDA, a graph break under ``torch.compile``)
in the training loss's inner loop, where this one is elementwise.

Example:
    >>> import torch
    >>> from attnlab.detect.boxes import box_iou, nms
    >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    >>> box_iou(boxes[:1], boxes).tolist()
    [[1.0, 0.8100000023841858, 0.0]]
    >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
    [0, 2]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_convert, box_iou, nms

__all__ = [
    "batched_nms",
    "box_iou",
    "ciou",
    "letterbox",
    "nms",
    "scale_boxes",
    "wh_iou",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) → (x1, y1, x2, y2), any leading dims."""
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(x1, y1, x2, y2) → (cx, cy, w, h), any leading dims."""
    return box_convert(boxes, "xyxy", "cxcywh")


def wh_iou(wh1: Tensor, wh2: Tensor, eps: float = 1e-9) -> Tensor:
    """Pairwise IoU of N and M (w, h) sizes as if the boxes shared a centre, N×M.

    Used to assign ground-truth boxes to anchors by shape alone.
    """
    inter = torch.minimum(wh1[:, None], wh2[None]).prod(-1)  # N×M
    return inter / (wh1.prod(-1)[:, None] + wh2.prod(-1)[None] - inter + eps)


def ciou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Elementwise Complete IoU of matching xyxy boxes (same shape …×4), differentiable.

    ``boxes2`` plays b_gt; α is treated as a constant in the gradient (as the DIoU/CIoU
    authors' code does), which does not change the value.
    """
    x1, y1, x2, y2 = boxes1.unbind(-1)
    gx1, gy1, gx2, gy2 = boxes2.unbind(-1)
    w, h = (x2 - x1).clamp(min=eps), (y2 - y1).clamp(min=eps)
    gw, gh = (gx2 - gx1).clamp(min=eps), (gy2 - gy1).clamp(min=eps)
    inter = (torch.minimum(x2, gx2) - torch.maximum(x1, gx1)).clamp(min=0) * (
        torch.minimum(y2, gy2) - torch.maximum(y1, gy1)
    ).clamp(min=0)
    iou = inter / (w * h + gw * gh - inter + eps)
    # ρ²: squared centre distance; c²: squared diagonal of the smallest enclosing box.
    rho2 = ((x1 + x2 - gx1 - gx2) ** 2 + (y1 + y2 - gy1 - gy2) ** 2) / 4
    cw = torch.maximum(x2, gx2) - torch.minimum(x1, gx1)
    ch = torch.maximum(y2, gy2) - torch.minimum(y1, gy1)
    c2 = cw**2 + ch**2 + eps
    v = (4 / math.pi**2) * (torch.atan(gw / gh) - torch.atan(w / h)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - rho2 / c2 - alpha * v


def letterbox(
    image: Tensor, size: int | tuple[int, int], fill: float = 0.5
) -> tuple[Tensor, float, tuple[float, float]]:
    """Resizes C×H×W keeping the aspect ratio and pads to ``size`` with ``fill`` (grey).

    Args:
        image: C×H×W float tensor.
        size: output side, or (height, width).
        fill: padding value (0.5: the reference repositories' grey 128/255, nearly).

    Returns:
        (padded image, scale, (pad_x, pad_y)) with a point (x, y) of the input at
        (x·scale + pad_x, y·scale + pad_y) in the output.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    height, width = image.shape[-2:]
    scale = min(out_h / height, out_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(
        image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )[0]
    pad_x, pad_y = (out_w - new_w) // 2, (out_h - new_h) // 2
    out = image.new_full((image.shape[0], out_h, out_w), fill)
    out[:, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, scale, (float(pad_x), float(pad_y))


def scale_boxes(
    boxes: Tensor, scale: float, pad: tuple[float, float], image_size: tuple[int, int] | None = None
) -> Tensor:
    """Maps xyxy boxes from a letterboxed image back to the original one.

    Args:
        boxes: …×4 xyxy boxes in letterboxed pixels.
        scale: the scale :func:`letterbox` returned.
        pad: the (pad_x, pad_y) it returned.
        image_size: original (height, width); boxes are clipped to it when given.
    """
    pad_xyxy = boxes.new_tensor([pad[0], pad[1], pad[0], pad[1]])
    out = (boxes[..., :4] - pad_xyxy) / scale
    if image_size is not None:
        height, width = image_size
        out = torch.stack(
            [
                out[..., 0].clamp(0, width),
                out[..., 1].clamp(0, height),
                out[..., 2].clamp(0, width),
                out[..., 3].clamp(0, height),
            ],
            -1,
        )
    return out
