"""Decoding YOLO head outputs into scored, class-labelled boxes (YOLOv3/v4 parametrisation,
Redmon & Farhadi, arXiv 1804.02767; Bochkovskiy et al., arXiv 2004.10934).

A level of stride s with A anchors outputs B×A(5+K)×H×W; channel a·(5+K) + j is attribute j of
anchor a at each cell (gx, gy): (tx, ty, tw, th, objectness logit, K class logits). The box is
centre ((σ(tx) + gx)·s, (σ(ty) + gy)·s), size (p_w·e^tw, p_h·e^th) with the anchor (p_w, p_h) in
input pixels — anchors are absolute, so the same anchors are used at every input size. Score =
σ(objectness) × σ(best class logit); one label per box (its best class).

Example:
    >>> import torch
    >>> from attnlab.detect.decode import decode_outputs, postprocess
    >>> outputs = [torch.full((1, 3 * 7, 2, 2), -9.0), torch.full((1, 3 * 7, 4, 4), -9.0)]
    >>> # anchor 0 (81×82) of the stride-32 level, cell (x=0, y=1): tx..th = 0, an object of class 0
    >>> outputs[0][0, 0:6, 1, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 9.0, 9.0])
    >>> anchors, masks = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)], [
    ...     [3, 4, 5], [1, 2, 3]]
    >>> dets = postprocess(decode_outputs(outputs, anchors, masks), conf_threshold=0.5)
    >>> dets[0]["boxes"].tolist(), dets[0]["labels"].tolist()
    ([[-24.5, 7.0, 56.5, 89.0]], [0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .boxes import batched_nms, xywh_to_xyxy


def _grid(height: int, width: int, like: Tensor) -> Tensor:
    """Cell offsets (gx, gy) as H×W×2."""
    gy, gx = torch.meshgrid(
        torch.arange(height, device=like.device, dtype=like.dtype),
        torch.arange(width, device=like.device, dtype=like.dtype),
        indexing="ij",
    )
    return torch.stack([gx, gy], -1)


def split_level(raw: Tensor, num_anchors: int) -> Tensor:
    """B×A(5+K)×H×W → B×A×H×W×(5+K) (a view's permutation, no copy of the attributes)."""
    b, c, h, w = raw.shape
    if c % num_anchors:
        raise ValueError(
            f"decode: {c} channels are not a multiple of {num_anchors} anchors (A·(5+K))"
        )
    return raw.view(b, num_anchors, c // num_anchors, h, w).permute(0, 1, 3, 4, 2)


def level_boxes(pred: Tensor, anchors: Tensor, stride: float) -> Tensor:
    """xyxy boxes in input pixels from a split level ``pred`` (B×A×H×W×(5+K)), B×A×H×W×4.

    Args:
        pred: raw attributes of one level (see :func:`split_level`).
        anchors: the level's A×2 anchor (w, h) in input pixels.
        stride: input pixels per cell.
    """
    grid = _grid(pred.shape[2], pred.shape[3], pred)  # H×W×2
    xy = (pred[..., :2].sigmoid() + grid) * stride  # B×A×H×W×2
    wh = pred[..., 2:4].exp() * anchors.to(pred)[None, :, None, None, :]
    return xywh_to_xyxy(torch.cat([xy, wh], -1))


def decode_outputs(
    outputs: Sequence[Tensor],
    anchors: Sequence[Sequence[float]],
    anchor_masks: Sequence[Sequence[int]],
    strides: Sequence[float] = (32, 16),
) -> Tensor:
    """All levels' predictions as one B×N×(5+K) tensor: xyxy box, objectness, class probs.

    Args:
        outputs: raw head outputs, one per level (stride-32 first for YOLOv4-tiny).
        anchors: all anchors (w, h) in input pixels.
        anchor_masks: the anchor indices of each level.
        strides: input pixels per cell of each level.

    Returns:
        B×N×(5+K), N = Σ A·H·W; probabilities (σ of the logits), not logits.
    """
    if not len(outputs) == len(anchor_masks) == len(strides):
        raise ValueError(
            f"decode: {len(outputs)} outputs, {len(anchor_masks)} anchor masks and "
            f"{len(strides)} strides; one of each per level"
        )
    all_anchors = torch.as_tensor(anchors, dtype=torch.float32)
    levels = []
    for raw, mask, stride in zip(outputs, anchor_masks, strides, strict=True):
        pred = split_level(raw, len(mask))
        boxes = level_boxes(pred, all_anchors[list(mask)], stride)
        out = torch.cat([boxes, pred[..., 4:].sigmoid()], -1)
        levels.append(out.reshape(raw.shape[0], -1, out.shape[-1]))  # B×(A·H·W)×(5+K)
    return torch.cat(levels, 1)


def postprocess(
    decoded: Tensor,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_det: int = 100,
) -> list[dict[str, Tensor]]:
    """Confidence filtering, class-aware NMS and a cap on detections, per image.

    Args:
        decoded: B×N×(5+K) from :func:`decode_outputs`.
        conf_threshold: keep boxes with objectness × best class probability ≥ this.
        iou_threshold: NMS threshold within a class.
        max_det: at most this many detections per image over all classes (highest scores).
            This is not COCO's rule, which keeps 100 per image *and class*
            (:mod:`attnlab.metrics.coco`): for COCO evaluation pass 100 × K.

    Returns:
        One dict per image: ``boxes`` (D×4 xyxy input pixels), ``scores`` (D), ``labels``
        (D int64), sorted by score, highest first.
    """
    results = []
    for pred in decoded:
        class_prob, labels = pred[:, 5:].max(1)
        scores = pred[:, 4] * class_prob
        keep = scores >= conf_threshold
        boxes, scores, labels = pred[keep, :4], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_det]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results
