"""Builds raw YOLOv4-tiny head outputs that decode to chosen boxes (shared by detect tests)."""

from __future__ import annotations

import math

import torch

from attnlab.models.yolov4_tiny import ANCHOR_MASKS, ANCHORS, STRIDES

BIG = 12.0  # a logit whose sigmoid is 1 − 6e-6


def empty_outputs(batch: int, num_classes: int, size: int) -> list[torch.Tensor]:
    """Raw outputs at input ``size`` with every objectness and class logit at −BIG."""
    outs = []
    for mask, stride in zip(ANCHOR_MASKS, STRIDES, strict=True):
        n = size // stride
        raw = torch.zeros(batch, len(mask), 5 + num_classes, n, n)
        raw[:, :, 4:] = -BIG
        outs.append(raw.view(batch, -1, n, n))
    return outs


def put_box(outputs, image, level, slot, box, label, obj=BIG):
    """Writes ``box`` (xyxy) of class ``label`` at anchor ``slot`` of ``level``, in the cell
    holding its centre, so that it decodes exactly."""
    mask, stride = ANCHOR_MASKS[level], STRIDES[level]
    raw = outputs[level]
    n = raw.shape[-1]
    view = raw.view(raw.shape[0], len(mask), -1, n, n)
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride, x2 - x1, y2 - y1
    gx, gy = int(cx), int(cy)
    aw, ah = ANCHORS[mask[slot]]
    fx, fy = cx - gx, cy - gy
    view[image, slot, 0, gy, gx] = math.log(fx / (1 - fx))
    view[image, slot, 1, gy, gx] = math.log(fy / (1 - fy))
    view[image, slot, 2, gy, gx] = math.log(w / aw)
    view[image, slot, 3, gy, gx] = math.log(h / ah)
    view[image, slot, 4, gy, gx] = obj
    view[image, slot, 5 + label, gy, gx] = BIG
    return gx, gy
