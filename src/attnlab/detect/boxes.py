"""Box operations in torch (no torchvision): formats, IoU, CIoU, batched NMS, letterbox.

Boxes are ``xyxy`` (x1, y1, x2, y2; x2 > x1, y2 > y1) in pixels unless a name says ``xywh``
(centre x, centre y, width, height). CIoU is from Zheng et al., "Distance-IoU Loss: Faster and
Better Learning for Bounding Box Regression", AAAI 2020, arXiv 1911.08287:
CIoU = IoU − ρ²(b, b_gt)/c² − αv with v = 4/π² (atan(w_gt/h_gt) − atan(w/h))² and
α = v / (1 − IoU + v).

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


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) → (x1, y1, x2, y2), any leading dims."""
    cxy, wh = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([cxy - wh / 2, cxy + wh / 2], -1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(x1, y1, x2, y2) → (cx, cy, w, h), any leading dims."""
    xy1, xy2 = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([(xy1 + xy2) / 2, xy2 - xy1], -1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of xyxy boxes (0 for degenerate ones), shape ``boxes.shape[:-1]``."""
    wh = (boxes[..., 2:4] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-9) -> Tensor:
    """Pairwise IoU of N and M xyxy boxes, N×M."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # N×M×2
    rb = torch.minimum(boxes1[:, None, 2:4], boxes2[None, :, 2:4])  # N×M×2
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None] - inter
    return inter / (union + eps)


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


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, highest score first.

    A box is dropped when its IoU with a kept, higher-scoring box is > ``iou_threshold``.
    Ties in score keep the lower index first (stable sort).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])  # N×N in score order
    n = order.numel()
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    # Only suppress by earlier (higher-scoring) boxes: the upper triangle of the IoU matrix.
    overlaps = (iou > iou_threshold).triu(diagonal=1)
    for i in range(n):
        if keep[i]:
            keep &= ~overlaps[i]
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Shifts each class's boxes by its own offset (class × (max coordinate + 1)) so that boxes of
    different classes cannot overlap, then runs one :func:`nms`.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold)


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
