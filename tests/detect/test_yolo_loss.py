"""YOLO loss: perfect vs wrong predictions, the ignore rule, assignment, empty images,
gradients, label smoothing."""

from __future__ import annotations

import pytest
import torch
from _yolo_encode import BIG, empty_outputs, put_box  # tests/detect is on sys.path

from attnlab.detect.loss import YoloLoss, smooth_labels
from attnlab.models.yolov4_tiny import ANCHOR_MASKS, ANCHORS

K = 3
SIZE = 256
BIG_BOX = (60.0, 40.0, 190.0, 210.0)  # 130×170 → anchor 4 (135×169): level 0, slot 1
SMALL_BOX = (100.0, 100.0, 123.0, 126.0)  # 23×26 → anchor 1 (23×27): level 1, slot 0


def make_loss(**kwargs) -> YoloLoss:
    return YoloLoss(K, ANCHORS, ANCHOR_MASKS, **kwargs)


def targets():
    return [torch.tensor([[2.0, *BIG_BOX], [0.0, *SMALL_BOX]]), torch.zeros(0, 5)]


def perfect_outputs():
    outputs = empty_outputs(2, K, SIZE)
    put_box(outputs, 0, 0, 1, BIG_BOX, 2)
    put_box(outputs, 0, 1, 0, SMALL_BOX, 0)
    return outputs


def test_assignment_by_wh_iou():
    loss = make_loss()
    boxes = [
        torch.tensor([[0.0, *BIG_BOX], [0.0, *SMALL_BOX], [0, 0, 0, 81, 82], [0, 0, 0, 9, 13]])
    ]
    # The last box fits anchor 0 best, which no level uses: it goes to the best used anchor.
    assert loss.assign(boxes).tolist() == [4, 1, 3, 1]


def test_perfect_prediction_near_zero_and_wrong_is_large():
    criterion = make_loss()
    perfect = criterion(perfect_outputs(), targets())
    assert perfect["num_pos"].item() == 2
    assert perfect["loss"].item() < 1e-4
    assert perfect["box"].item() < 1e-5 and perfect["cls"].item() < 1e-4

    wrong_class = perfect_outputs()
    put_box(wrong_class, 0, 0, 1, BIG_BOX, 0)  # class 0 logit up too: class 2 and 0 both "on"
    shifted = perfect_outputs()
    put_box(shifted, 0, 0, 1, (100.0, 80.0, 150.0, 170.0), 2)  # same cell, wrong size
    missing = empty_outputs(2, K, SIZE)  # no objectness anywhere
    for outputs, key in ((wrong_class, "cls"), (shifted, "box"), (missing, "obj")):
        got = criterion(outputs, targets())
        assert got[key].item() > 100 * max(perfect[key].item(), 1e-6), key
        assert got["loss"].item() > 100 * perfect["loss"].item()


def obj_grad(outputs, level, slot, gx, gy, num_anchors=3):
    """Gradient of the loss w.r.t. one objectness logit."""
    raw = outputs[level].requires_grad_(True)
    make_loss()(outputs, targets())["loss"].backward()
    n = raw.shape[-1]
    return raw.grad.view(2, num_anchors, -1, n, n)[0, slot, 4, gy, gx].item()


def test_ignore_rule():
    # A confident prediction at an unassigned slot (level 0, slot 0) decoding to nearly the big
    # target box (IoU > 0.5): not a negative, so no gradient pushes its objectness down.
    outputs = perfect_outputs()
    gx, gy = put_box(outputs, 0, 0, 0, (62.0, 44.0, 190.0, 206.0), 1, obj=4.0)
    assert obj_grad(outputs, 0, 0, gx, gy) == 0.0
    # The same prediction moved off the target (IoU < 0.5) is a negative: positive gradient.
    outputs = perfect_outputs()
    gx, gy = put_box(outputs, 0, 0, 0, (0.0, 0.0, 60.0, 60.0), 1, obj=4.0)
    assert obj_grad(outputs, 0, 0, gx, gy) > 0.0
    # With the ignore threshold at 1.0 nothing is ignored.
    outputs = perfect_outputs()
    gx, gy = put_box(outputs, 0, 0, 0, (62.0, 44.0, 190.0, 206.0), 1, obj=4.0)
    raw = outputs[0].requires_grad_(True)
    make_loss(ignore_threshold=1.0)(outputs, targets())["loss"].backward()
    assert raw.grad.view(2, 3, -1, 8, 8)[0, 0, 4, gy, gx].item() > 0.0


def test_no_targets():
    outputs = [o.clone().normal_().requires_grad_(True) for o in empty_outputs(2, K, 64)]
    got = make_loss()(outputs, [torch.zeros(0, 5), torch.zeros(0, 5)])
    assert got["num_pos"].item() == 0 and got["box"].item() == 0 and got["cls"].item() == 0
    assert torch.isfinite(got["loss"]) and got["obj"].item() > 0
    got["loss"].backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


def test_gradients_reach_the_model():
    import attnlab

    model = attnlab.create_model("yolov4_tiny", num_classes=K, phi=2)
    criterion = YoloLoss.from_config(model.config)
    got = criterion(model(torch.randn(2, 3, 64, 64)), [torch.tensor([[1.0, 4, 6, 40, 60]])] * 2)
    got["loss"].backward()
    assert got["num_pos"].item() >= 2
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head_p4[1].weight.grad.abs().sum() > 0


def test_label_smoothing():
    targets_ = smooth_labels(torch.tensor([0, 2]), 4, 0.1)
    torch.testing.assert_close(
        targets_, torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]])
    )
    plain = make_loss()(perfect_outputs(), targets())["cls"].item()
    smoothed = make_loss(label_smoothing=0.1)(perfect_outputs(), targets())["cls"].item()
    assert smoothed > 100 * plain
    # A prediction at the smoothed targets has a lower smoothed class loss than the perfect one.
    soft = perfect_outputs()
    view = soft[1].view(2, 3, 5 + K, 16, 16)
    logit = torch.logit(torch.tensor([0.9 + 0.1 / K, 0.1 / K, 0.1 / K]))
    gx, gy = 111 // 16, 113 // 16
    view[0, 0, 5:, gy, gx] = logit
    assert make_loss(label_smoothing=0.1)(soft, targets())["cls"].item() < smoothed


def test_bad_targets():
    outputs = empty_outputs(2, K, 64)
    with pytest.raises(ValueError, match="2 images but 1"):
        make_loss()(outputs, [torch.zeros(0, 5)])
    with pytest.raises(ValueError, match=r"targets\[1\] must be N×5"):
        make_loss()(outputs, [torch.zeros(0, 5), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="class outside"):
        make_loss()(outputs, [torch.tensor([[3.0, 0, 0, 5, 5]]), torch.zeros(0, 5)])
    assert BIG > 10
