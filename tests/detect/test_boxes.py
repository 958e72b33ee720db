"""Box ops: formats, IoU, CIoU by hand and against torchvision, NMS (torchvision's) against
brute force, letterbox round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss

from attnlab.detect.boxes import (
    batched_nms,
    box_iou,
    ciou,
    letterbox,
    nms,
    scale_boxes,
    wh_iou,
    xywh_to_xyxy,
    xyxy_to_xywh,
)


def test_format_round_trip():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    xywh = xyxy_to_xywh(xyxy)
    assert xywh.tolist() == [[3.0, 6.0, 4.0, 8.0]]
    torch.testing.assert_close(xywh_to_xyxy(xywh), xyxy)


def test_box_iou_hand_cases():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [2, 0, 4, 2], [0, 0, 4, 4], [5, 5, 6, 6]])
    # 1/7 (1 of 4+4-1), identical, touching edge, contained (4/16), disjoint.
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.25, 0.0]]))
    assert box_iou(b, a).shape == (5, 1)


def test_wh_iou():
    got = wh_iou(torch.tensor([[2.0, 2.0]]), torch.tensor([[2.0, 2.0], [4.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(got, torch.tensor([[1.0, 2 / 6, 0.25]]))


def test_ciou_hand_cases():
    box = torch.tensor([0.0, 0, 2, 2])
    torch.testing.assert_close(ciou(box, box), torch.tensor(1.0))
    # Same shape, shifted by 1 in x: IoU = 2/6, ρ² = 1, c² = 3² + 2² = 13, v = 0.
    shifted = torch.tensor([1.0, 0, 3, 2])
    torch.testing.assert_close(ciou(shifted, box), torch.tensor(1 / 3 - 1 / 13))
    # Same centre, 4×1 vs 2×2 (gt): IoU = 2/6, ρ = 0, v = 4/π²(atan 1 − atan 4)², α = v/(1−IoU+v).
    wide = torch.tensor([-1.0, 0.5, 3, 1.5])
    v = 4 / math.pi**2 * (math.atan(1) - math.atan(4)) ** 2
    expected = 1 / 3 - v / (1 - 1 / 3 + v) * v
    torch.testing.assert_close(ciou(wide, box), torch.tensor(expected, dtype=torch.float32))


def test_ciou_is_differentiable_and_disjoint_negative():
    pred = torch.tensor([[4.0, 4, 6, 7]], requires_grad=True)
    gt = torch.tensor([[0.0, 0, 2, 2]])
    value = ciou(pred, gt)
    assert value.item() < 0  # disjoint: IoU 0 minus the distance term
    (1 - value).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert pred.grad[0, 0] > 0  # moving x1 right increases the loss (further from gt)


def random_boxes(n: int, g: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=dtype) * 40 + 1], 1)


def test_ciou_matches_torchvision_loss_and_gradient():
    """1 − CIoU is torchvision's complete_box_iou_loss (α held constant in both)."""
    g = torch.Generator().manual_seed(0)
    pred = random_boxes(64, g, torch.float64).requires_grad_()
    gt = random_boxes(64, g, torch.float64)
    ours = 1 - ciou(pred, gt)
    theirs = complete_box_iou_loss(pred, gt, reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    (grad_ours,) = torch.autograd.grad(ours.sum(), pred)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), pred)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-10, atol=1e-12)


def brute_force_nms(boxes, scores, classes, threshold):
    """Reference: repeatedly take the best remaining box, drop same-class overlaps."""
    remaining = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    kept = []
    while remaining:
        best = remaining.pop(0)
        kept.append(best)
        survivors = []
        for j in remaining:
            same = int(classes[j]) == int(classes[best])
            if not (same and float(box_iou(boxes[best : best + 1], boxes[j : j + 1])) > threshold):
                survivors.append(j)
        remaining = survivors
    return kept


@pytest.mark.parametrize("seed", range(25))
def test_batched_nms_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 60, (1,), generator=g))
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, 3, (n,), generator=g)
    threshold = float(torch.rand(1, generator=g)) * 0.8 + 0.1
    kept = batched_nms(boxes, scores, classes, threshold).tolist()
    assert kept == brute_force_nms(boxes, scores, classes, threshold)


def test_nms_edge_cases():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    # Identical boxes of different classes both survive; of one class, one does.
    assert batched_nms(boxes, torch.tensor([0.5, 0.9]), torch.tensor([0, 1]), 0.5).tolist() == [
        1,
        0,
    ]
    assert nms(boxes, torch.tensor([0.5, 0.9]), 0.5).tolist() == [1]


@pytest.mark.parametrize(("height", "width"), [(60, 120), (120, 60), (64, 64)])
def test_letterbox_round_trip(height, width):
    image = torch.rand(3, height, width)
    out, scale, (pad_x, pad_y) = letterbox(image, 96)
    assert out.shape == (3, 96, 96)
    assert scale == pytest.approx(96 / max(height, width))
    if width > height:
        assert pad_x == 0 and pad_y > 0 and out[:, 0, :].eq(0.5).all()
    box = torch.tensor([[10.0, 12.0, 40.0, 50.0]])
    mapped = box * scale + torch.tensor([pad_x, pad_y, pad_x, pad_y])
    torch.testing.assert_close(scale_boxes(mapped, scale, (pad_x, pad_y)), box)
    clipped = scale_boxes(
        torch.tensor([[-5.0, -5.0, 200.0, 200.0]]), scale, (pad_x, pad_y), (height, width)
    )
    assert clipped.tolist() == [[0.0, 0.0, float(width), float(height)]]


def test_letterbox_content_lands_in_box():
    image = torch.zeros(1, 40, 80)
    image[:, 10:20, 20:40] = 1.0  # a white rectangle at x 20-40, y 10-20
    out, scale, (pad_x, pad_y) = letterbox(image, (64, 64))
    x1, y1 = 20 * scale + pad_x, 10 * scale + pad_y
    x2, y2 = 40 * scale + pad_x, 20 * scale + pad_y
    inner = out[0, math.ceil(y1) + 1 : int(y2) - 1, math.ceil(x1) + 1 : int(x2) - 1]
    assert inner.numel() > 0 and inner.min() > 0.9
