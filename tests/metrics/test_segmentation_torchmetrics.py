"""Per-class IoU and mIoU against torchmetrics' MulticlassJaccardIndex (ignore index 255)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from attnlab.metrics import ConfusionMatrix


@pytest.mark.parametrize("seed", range(3))
def test_iou_matches_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 6
    ours = ConfusionMatrix(num_classes)
    reference = MulticlassJaccardIndex(num_classes, average="none", ignore_index=255)
    for _ in range(3):  # accumulated over batches
        target = torch.randint(0, num_classes - 1, (2, 17, 23), generator=g)  # class 5 absent
        noise = torch.randint(0, num_classes - 2, target.shape, generator=g)
        pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target, noise)
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        ours.update(pred, target)
        reference.update(pred, target)
    iou, expected = ours.iou(), reference.compute().double()
    present = ~iou.isnan()
    assert present.tolist() == [True] * 5 + [False]  # class 5: in neither ground truth nor preds
    torch.testing.assert_close(iou[present].double(), expected[present], rtol=1e-6, atol=1e-7)
    assert ours.miou() == pytest.approx(float(expected[present].mean()), rel=1e-6)
