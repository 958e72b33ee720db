"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU and pixel accuracy, as
reported by DANet (Fu et al., CVPR 2019, arXiv 1809.02983) and the Cityscapes/VOC benchmarks.

The matrix counts pixels by (ground-truth class, predicted class), rows = ground truth;
pixels labelled ``ignore_index`` are not counted. IoU_c = TP / (TP + FP + FN). A class absent
from both the ground truth and the predictions of everything accumulated has no IoU (NaN) and
is left out of the mean; a class that is only predicted (or only in the ground truth) has
IoU 0 and counts. Pixel accuracy = correct pixels / counted pixels.

Example:
    >>> import torch
    >>> from attnlab.metrics.segmentation import ConfusionMatrix
    >>> cm = ConfusionMatrix(3)
    >>> cm.update(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 0, 255]]))
    >>> [round(v, 4) for v in cm.iou().tolist()[:2]], round(cm.miou(), 4), cm.pixel_accuracy()
    ([0.5, 0.5], 0.5, 0.6666666666666666)
"""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """num_classes × num_classes int64 counts, rows = ground truth, columns = prediction.

    Args:
        pred: predicted labels (any shape), or logits B×C×H×W (argmax over C is taken).
        target: labels with the shape of ``pred``'s labels; ``ignore_index`` is skipped.
        num_classes: number of classes.
        ignore_index: label of pixels not counted.
    """
    if pred.is_floating_point():
        if pred.dim() != target.dim() + 1:
            raise ValueError(
                f"confusion_matrix: float predictions must be logits B×C×H×W for target B×H×W, "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: prediction {tuple(pred.shape)} and target "
            f"{tuple(target.shape)} differ in shape"
        )
    valid = target != ignore_index
    gt, pr = target[valid].long(), pred[valid].long()
    for name, labels in (("target", gt), ("prediction", pr)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
            raise ValueError(
                f"confusion_matrix: {name} label {bad} is outside 0..{num_classes - 1} "
                f"(ignore index {ignore_index})"
            )
    counts = torch.bincount(gt * num_classes + pr, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()  # gt × pred


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches and derives the metrics.

    Args:
        num_classes: number of classes (background included).
        ignore_index: label of pixels not counted (255).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"ConfusionMatrix: num_classes must be an int >= 1, got {num_classes!r}"
            )
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``pred`` labels (or logits B×C×H×W) and ``target`` labels."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def iou(self) -> torch.Tensor:
        """Per-class IoU (float64); NaN for classes absent from ground truth and predictions."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes that have one (NaN if no pixel was counted)."""
        iou = self.iou()
        present = ~iou.isnan()
        return float(iou[present].mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct / counted pixels (NaN if none was counted)."""
        total = int(self.matrix.sum())
        return int(self.matrix.diag().sum()) / total if total else float("nan")

    def compute(self, class_names: list[str] | None = None) -> dict:
        """``{"miou", "pixel_accuracy", "iou": {name: IoU or None}}`` as plain Python values."""
        names = class_names or [str(c) for c in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(
                f"ConfusionMatrix: {len(names)} class names for {self.num_classes} classes"
            )
        iou = [None if v != v else v for v in self.iou().tolist()]  # NaN → None (JSON)
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "iou": dict(zip(names, iou, strict=True)),
        }
