"""YOLOv4(-tiny) training loss as in the bubbliiiing YOLOv4 repositories (Bochkovskiy et al.,
arXiv 2004.10934; CIoU from Zheng et al., arXiv 1911.08287).

- **Assignment**: each ground-truth box goes to the anchor whose (w, h) has the highest IoU with
  its own (centres aligned), at the cell holding its centre, on every level whose anchor mask
  contains that anchor (YOLOv4-tiny's masks share anchor 3 between the levels). The search runs
  over the anchors some level uses: the published masks leave anchor 0 unused, and a small box
  matched to it would otherwise never be a positive (the reference code drops such boxes).
  Two boxes on one slot: the later one wins, as in the reference code.
- **Box**: mean of 1 − CIoU over the positives (decoded boxes vs. targets, input pixels).
- **Objectness**: BCE; positives target 1, every other prediction targets 0 except those whose
  decoded box overlaps some ground truth of its image by IoU > ``ignore_threshold`` (0.5): they
  are left out (neither positive nor negative). Mean over positives and negatives.
- **Classes**: BCE over the K logits of the positives against one-hot targets, smoothed to
  ``t·(1 − ε) + ε/K`` with ``label_smoothing`` ε.
- **Weights**: total = Σ_levels [box_weight · box + cls_weight · cls + balance_l · obj_weight ·
  (H·W / 416²) · obj]. Defaults are the reference code's: box 0.05, obj 1.0 (scaled by the input
  area as there), cls K/80, and ``balance`` (0.4, 1.0) for (stride 32, stride 16) — its
  ``[0.4, 1.0, 4]`` for strides 32, 16, 8 cut to YOLOv4-tiny's two levels.

Example:
    >>> import torch, attnlab
    >>> from attnlab.detect.loss import YoloLoss
    >>> model = attnlab.create_model("yolov4_tiny", num_classes=3)
    >>> criterion = YoloLoss.from_config(model.config)
    >>> targets = [torch.tensor([[1.0, 8, 8, 40, 50]]), torch.zeros(0, 5)]
    >>> losses = criterion(model(torch.randn(2, 3, 64, 64)), targets)
    >>> sorted(losses), bool(losses["loss"] > 0)
    (['box', 'cls', 'loss', 'num_pos', 'obj'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import box_iou, ciou, wh_iou
from .decode import level_boxes, split_level


def smooth_labels(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """One-hot class targets N×K, smoothed to t·(1 − ε) + ε/K."""
    onehot = F.one_hot(labels.long(), num_classes).float()
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def check_targets(targets: Sequence[Tensor], batch: int, num_classes: int) -> None:
    """ValueError unless ``targets`` is one N×5 (class, x1, y1, x2, y2) tensor per image."""
    if len(targets) != batch:
        raise ValueError(f"YoloLoss: {batch} images but {len(targets)} target tensors")
    for i, t in enumerate(targets):
        if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != 5:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"YoloLoss: targets[{i}] must be N×5 (class, x1, y1, x2, y2), got {got}"
            )
        if len(t) and (t[:, 0].min() < 0 or t[:, 0].max() >= num_classes):
            raise ValueError(f"YoloLoss: targets[{i}] has a class outside 0..{num_classes - 1}")


class YoloLoss(nn.Module):
    """Loss of a YOLO model with anchor masks (see the module docstring).

    Args:
        num_classes: K.
        anchors: all anchors (w, h) in input pixels.
        anchor_masks: anchor indices of each level, in the order of the model's outputs.
        strides: input pixels per cell of each level.
        balance: objectness weight of each level.
        box_weight: weight of the CIoU term.
        obj_weight: weight of the objectness term at a 416×416 input (scaled by the input area).
        cls_weight: weight of the class term (default K/80).
        ignore_threshold: IoU above which a non-assigned prediction is not a negative.
        label_smoothing: ε of the class targets.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence[Sequence[float]],
        anchor_masks: Sequence[Sequence[int]],
        strides: Sequence[float] = (32, 16),
        *,
        balance: Sequence[float] = (0.4, 1.0),
        box_weight: float = 0.05,
        obj_weight: float = 1.0,
        cls_weight: float | None = None,
        ignore_threshold: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if not len(anchor_masks) == len(strides) == len(balance):
            raise ValueError("YoloLoss: anchor_masks, strides and balance need one entry per level")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"YoloLoss: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32))
        self.anchor_masks = [list(m) for m in anchor_masks]
        self.strides = list(strides)
        self.balance = list(balance)
        self.box_weight, self.obj_weight = box_weight, obj_weight
        self.cls_weight = num_classes / 80 if cls_weight is None else cls_weight
        self.ignore_threshold = ignore_threshold
        self.label_smoothing = label_smoothing
        self.used_anchors = sorted({i for m in anchor_masks for i in m})

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> YoloLoss:
        """The loss for a model's ``config`` (num_classes, anchors, anchor_masks)."""
        return cls(config["num_classes"], config["anchors"], config["anchor_masks"], **kwargs)

    def assign(self, targets: Sequence[Tensor]) -> Tensor:
        """Best used anchor per target box, concatenated over images (N_total)."""
        boxes = torch.cat([t[:, 1:5] for t in targets]).to(self.anchors)
        if not len(boxes):
            return torch.zeros(0, dtype=torch.long, device=self.anchors.device)
        used = torch.tensor(self.used_anchors, device=boxes.device)
        wh = (boxes[:, 2:4] - boxes[:, :2]).clamp(min=1e-6)
        return used[wh_iou(wh, self.anchors[used]).argmax(1)]

    def forward(self, outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> dict[str, Tensor]:
        """Loss of raw head ``outputs`` against per-image N×5 (class, x1, y1, x2, y2) targets.

        Returns:
            ``loss`` (the weighted total, differentiable), and the weighted, level-summed
            ``box``, ``obj``, ``cls`` terms and ``num_pos`` (detached).
        """
        batch = outputs[0].shape[0]
        check_targets(targets, batch, self.num_classes)
        device = outputs[0].device
        targets = [t.to(device=device, dtype=torch.float32) for t in targets]
        image = torch.cat([torch.full((len(t),), i, device=device) for i, t in enumerate(targets)])
        image = image.long()
        gt = torch.cat(targets) if targets else torch.zeros(0, 5, device=device)
        best = self.assign(targets)
        zero = outputs[0].sum() * 0.0
        terms = {"box": zero, "obj": zero, "cls": zero}
        num_pos = 0
        for raw, mask, stride, balance in zip(
            outputs, self.anchor_masks, self.strides, self.balance, strict=True
        ):
            pred = split_level(raw, len(mask))  # B×A×H×W×(5+K)
            _, _, height, width, _ = pred.shape
            boxes = level_boxes(pred, self.anchors[mask], stride)  # B×A×H×W×4
            obj_target = torch.zeros(pred.shape[:4], device=device)
            negative = torch.ones(pred.shape[:4], dtype=torch.bool, device=device)

            # Ignore rule: predictions overlapping any ground truth of their image by IoU > 0.5.
            for b, t in enumerate(targets):
                if len(t):
                    iou = box_iou(boxes[b].detach().reshape(-1, 4), t[:, 1:5])  # (A·H·W)×N
                    over = iou.amax(1) > self.ignore_threshold
                    negative[b] &= ~over.view(negative.shape[1:])

            level_anchor = torch.full((len(self.anchors),), -1, dtype=torch.long, device=device)
            level_anchor[mask] = torch.arange(len(mask), device=device)
            a = level_anchor[best]
            keep = a >= 0
            if keep.any():
                g, a, b = gt[keep], a[keep], image[keep]
                centre = (g[:, 1:3] + g[:, 3:5]) / 2 / stride
                gx = centre[:, 0].long().clamp(0, width - 1)
                gy = centre[:, 1].long().clamp(0, height - 1)
                # One slot per (image, anchor, cell); a later box overwrites an earlier one.
                slot = ((b * len(mask) + a) * height + gy) * width + gx
                order = torch.arange(len(slot), device=device)
                last = torch.zeros(
                    batch * len(mask) * height * width, dtype=torch.long, device=device
                ).scatter_reduce(0, slot, order, "amax")
                unique = torch.unique(slot)
                chosen = last[unique]
                g, a, b, gx, gy = g[chosen], a[chosen], b[chosen], gx[chosen], gy[chosen]
                obj_target[b, a, gy, gx] = 1.0
                negative[b, a, gy, gx] = False
                p = pred[b, a, gy, gx]  # P×(5+K)
                terms["box"] = (
                    terms["box"]
                    + self.box_weight * (1.0 - ciou(boxes[b, a, gy, gx], g[:, 1:5])).mean()
                )
                cls_target = smooth_labels(g[:, 0], self.num_classes, self.label_smoothing)
                terms["cls"] = terms["cls"] + self.cls_weight * F.binary_cross_entropy_with_logits(
                    p[:, 5:], cls_target
                )
                num_pos += len(chosen)
            counted = (obj_target > 0) | negative
            obj = F.binary_cross_entropy_with_logits(
                pred[..., 4][counted], obj_target[counted], reduction="sum"
            ) / counted.sum().clamp(min=1)
            area = height * width * stride * stride / 416**2
            terms["obj"] = terms["obj"] + balance * self.obj_weight * area * obj
        total = terms["box"] + terms["obj"] + terms["cls"]
        return {
            "loss": total,
            **{k: v.detach() for k, v in terms.items()},
            "num_pos": torch.tensor(num_pos),
        }
