"""Confusion-matrix segmentation metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

import attnlab.metrics
from attnlab.metrics.segmentation import ConfusionMatrix, confusion_matrix


def test_matrix_rows_are_ground_truth():
    pred = torch.tensor([[0, 1, 2, 2], [1, 1, 0, 2]])
    target = torch.tensor([[0, 1, 1, 2], [255, 1, 0, 0]])
    expected = torch.tensor([[2, 0, 1], [0, 2, 1], [0, 0, 1]])
    assert torch.equal(confusion_matrix(pred, target, 3), expected)


def test_iou_miou_and_accuracy_by_hand():
    cm = ConfusionMatrix(4)
    pred = torch.tensor([[0, 0, 1, 1, 1, 2]])
    target = torch.tensor([[0, 1, 1, 1, 255, 0]])
    cm.update(pred, target)
    # valid pixels: (0,0) (1,0) (1,1) (1,1) (0,2); class 3 absent from both
    # class 0: TP 1, FP 1, FN 1 → 1/3; class 1: TP 2, FN 1 → 2/3; class 2: FP 1 → 0
    iou = cm.iou()
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)  # class 3 left out
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    result = cm.compute(["bg", "a", "b", "c"])
    assert result["iou"]["c"] is None and result["iou"]["a"] == pytest.approx(2 / 3)
    assert result["miou"] == pytest.approx(1 / 3)


def test_class_only_in_ground_truth_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 2]))
    assert cm.iou()[2].item() == 0.0 and math.isnan(cm.iou()[1])
    assert cm.miou() == pytest.approx((2 / 3 + 0) / 2)


def test_accumulates_over_batches_and_accepts_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 6, 7)
    target = torch.randint(0, 5, (4, 6, 7))
    target[0, :2] = 255
    whole = ConfusionMatrix(5)
    whole.update(logits.argmax(1), target)
    parts = ConfusionMatrix(5)
    for i in range(4):
        parts.update(logits[i : i + 1], target[i : i + 1])
    assert torch.equal(whole.matrix, parts.matrix)
    assert int(whole.matrix.sum()) == 4 * 6 * 7 - 14
    correct = ((logits.argmax(1) == target) & (target != 255)).sum().item()
    assert whole.pixel_accuracy() == pytest.approx(correct / (4 * 6 * 7 - 14))
    whole.reset()
    assert whole.matrix.sum() == 0 and math.isnan(whole.miou())
    assert math.isnan(whole.pixel_accuracy())


def test_all_ignored_and_custom_ignore():
    cm = ConfusionMatrix(2, ignore_index=-1)
    cm.update(torch.tensor([1, 1]), torch.tensor([-1, -1]))
    assert cm.matrix.sum() == 0
    cm.update(torch.tensor([1, 0]), torch.tensor([1, -1]))
    assert cm.miou() == 1.0 and cm.pixel_accuracy() == 1.0


def test_errors():
    with pytest.raises(ValueError, match="target label 3 is outside 0..2"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="prediction label 5"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match="class names"):
        ConfusionMatrix(2).compute(["a"])


def test_exported_from_metrics_package():
    assert attnlab.metrics.ConfusionMatrix is ConfusionMatrix
    assert attnlab.metrics.confusion_matrix is confusion_matrix
