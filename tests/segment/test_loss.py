"""DANet's three-term segmentation loss on hand-made logits and targets."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.segment import SegmentationLoss, segmentation_loss


def _logits():
    # 1×2×1×3: pixel 0 favours class 0 by 2, pixel 1 is even, pixel 2 favours class 1 by 1
    return torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]])


def _ce(margin: float) -> float:  # −log softmax of the true class with logit lead `margin`
    return math.log(1 + math.exp(-margin))


def test_single_output_mean_over_valid_pixels():
    target = torch.tensor([[[0, 1, 255]]])
    expected = (_ce(2.0) + _ce(0.0)) / 2  # pixel 2 ignored
    assert segmentation_loss(_logits(), target).item() == pytest.approx(expected, rel=1e-6)
    target = torch.tensor([[[1, 0, 1]]])
    expected = (_ce(-2.0) + _ce(0.0) + _ce(1.0)) / 3
    assert segmentation_loss(_logits(), target).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_sum_of_three_terms():
    target = torch.tensor([[[0, 1, 1]]])
    logits = _logits()
    outputs = {"out": logits, "pam": logits * 2, "cam": torch.zeros_like(logits)}
    out_term = (_ce(2.0) + _ce(0.0) + _ce(1.0)) / 3
    pam_term = (_ce(4.0) + _ce(0.0) + _ce(2.0)) / 3
    cam_term = math.log(2)
    weights = {"out": 1.0, "pam": 0.5, "cam": 0.25}
    loss, terms = segmentation_loss(outputs, target, weights=weights, return_terms=True)
    assert loss.item() == pytest.approx(out_term + 0.5 * pam_term + 0.25 * cam_term, rel=1e-6)
    assert terms["pam"].item() == pytest.approx(pam_term, rel=1e-6)
    default = SegmentationLoss()(outputs, target)  # equal weights, the authors' sum
    assert default.item() == pytest.approx(out_term + pam_term + cam_term, rel=1e-6)


def test_single_output_heads_work_with_default_weights():
    target = torch.tensor([[[0, 1, 1]]])
    assert SegmentationLoss()({"out": _logits()}, target).item() == pytest.approx(
        segmentation_loss(_logits(), target).item()
    )


def test_all_pixels_ignored_gives_zero_not_nan():
    logits = _logits().requires_grad_()
    target = torch.full((1, 1, 3), 255)
    loss = SegmentationLoss()({"out": logits, "pam": logits, "cam": logits}, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_custom_ignore_index_and_gradients():
    logits = _logits().requires_grad_()
    target = torch.tensor([[[0, -1, -1]]])
    loss = SegmentationLoss(ignore_index=-1)(logits, target)
    assert loss.item() == pytest.approx(_ce(2.0), rel=1e-6)
    loss.backward()
    assert logits.grad[..., 1:].abs().sum() == 0 and logits.grad[..., 0].abs().sum() > 0


def test_errors():
    target = torch.tensor([[[0, 1, 1]]])
    with pytest.raises(ValueError, match="no weight for outputs \\['aux'\\]"):
        segmentation_loss({"out": _logits(), "aux": _logits()}, target)
    with pytest.raises(ValueError, match="label 2 is outside 0..1"):
        segmentation_loss(_logits(), torch.tensor([[[0, 2, 255]]]))
    with pytest.raises(ValueError, match="must match"):
        segmentation_loss(_logits(), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        segmentation_loss(_logits(), target.float())
    with pytest.raises(ValueError, match="weight of 'pam'"):
        SegmentationLoss({"out": 1.0, "pam": -1.0})
