"""Detection mAP: hand-computed small cases, perfect detections, empty cases, difficult boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnlab.metrics import ap_table, evaluate_detections
from attnlab.metrics.detection import coco_ap, voc_ap

GT_BOX = [0.0, 0.0, 10.0, 10.0]


def det(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def gt(boxes, labels, difficult=None):
    out = {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels).long()}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


def test_perfect_detections_ap_one():
    g = torch.Generator().manual_seed(0)
    gts, dets = [], []
    for _ in range(5):
        xy = torch.rand(4, 2, generator=g) * 50
        boxes = torch.cat([xy, xy + 5 + torch.rand(4, 2, generator=g) * 20], 1)
        labels = torch.randint(0, 3, (4,), generator=g)
        gts.append({"boxes": boxes, "labels": labels})
        dets.append(
            {"boxes": boxes.clone(), "scores": torch.rand(4, generator=g), "labels": labels}
        )
    result = evaluate_detections(dets, gts, num_classes=3)
    assert result["map50"] == pytest.approx(1.0) and result["map"] == pytest.approx(1.0)


def test_hand_computed_two_images():
    # Scores 0.9 TP (image 0), 0.8 FP, 0.7 TP (image 1): recall .5 .5 1, precision 1 .5 2/3.
    gts = [gt([GT_BOX], [0]), gt([[20.0, 20, 30, 30]], [0])]
    dets = [
        det([GT_BOX, [50, 50, 60, 60]], [0.9, 0.8], [0, 0]),
        det([[20, 20, 30, 30]], [0.7], [0]),
    ]
    result = evaluate_detections(dets, gts, num_classes=1)
    assert result["map50"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # COCO: recall points 0…0.5 (51) at precision 1, 0.51…1 (50) at 2/3; same at every IoU.
    assert result["map"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert result["per_class"][0]["num_gt"] == 2 and result["per_class"][0]["num_det"] == 3


def test_duplicates_and_iou_thresholds():
    # A (0.9) overlaps the GT by IoU 0.62, B (0.8) exactly. Each GT is matched once.
    dets = [det([[0, 0, 10, 6.2], GT_BOX], [0.9, 0.8], [0, 0])]
    result = evaluate_detections(dets, [gt([GT_BOX], [0])], num_classes=1)
    assert result["map50"] == pytest.approx(1.0)  # A TP, B duplicate FP after full recall
    # IoU 0.5, 0.55, 0.6: A TP → AP 1; 0.65 … 0.95: A FP, B TP → precision 1/2 → AP 0.5.
    assert result["map"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10)
    # Exact duplicates: the second is a false positive, AP@0.5 still 1 (it comes after recall 1).
    dup = evaluate_detections([det([GT_BOX, GT_BOX], [0.9, 0.8], [0, 0])], [gt([GT_BOX], [0])], 1)
    assert dup["map50"] == pytest.approx(1.0)
    # A duplicate scored above the true positive halves the precision at full recall.
    first = evaluate_detections(
        [det([[0, 0, 10, 2], GT_BOX], [0.9, 0.8], [0, 0])], [gt([GT_BOX], [0])], 1
    )
    assert first["map50"] == pytest.approx(0.5)


def test_no_detections_and_no_ground_truth():
    empty = det([], [], [])
    result = evaluate_detections([empty, empty], [gt([GT_BOX], [0]), gt([], [])], num_classes=2)
    rows = result["per_class"]
    assert rows[0]["ap50"] == 0.0 and rows[0]["ap"] == 0.0
    assert math.isnan(rows[1]["ap50"]) and rows[1]["num_gt"] == 0
    assert result["map50"] == 0.0  # class 1 (no GT) is excluded from the mean
    # Detections of a class without GT anywhere: AP NaN, excluded; class 0 unaffected.
    dets = [det([GT_BOX, [40, 40, 50, 50]], [0.9, 0.95], [0, 1]), empty]
    result = evaluate_detections(dets, [gt([GT_BOX], [0]), gt([], [])], num_classes=2)
    assert result["map50"] == 1.0 and math.isnan(result["per_class"][1]["ap"])
    # Detections in an image without GT of their class are false positives.
    dets = [empty, det([[0, 0, 10, 10]], [0.99], [0])]
    dets[0] = det([GT_BOX], [0.5], [0])
    result = evaluate_detections(dets, [gt([GT_BOX], [0]), gt([], [])], num_classes=1)
    assert result["map50"] == pytest.approx(0.5)
    # No ground truth at all: NaN means.
    nothing = evaluate_detections([dets[1]], [gt([], [])], num_classes=1)
    assert math.isnan(nothing["map50"]) and math.isnan(nothing["map"])


def test_class_aware_matching():
    result = evaluate_detections([det([GT_BOX], [0.9], [1])], [gt([GT_BOX], [0])], num_classes=2)
    assert result["map50"] == 0.0


def test_difficult_ground_truth_is_ignored():
    gts = [gt([GT_BOX, [20.0, 20, 30, 30]], [0, 0], difficult=[False, True])]
    # A detection on the difficult box, scored highest: neither TP nor FP.
    dets = [det([[20, 20, 30, 30], GT_BOX], [0.9, 0.8], [0, 0])]
    result = evaluate_detections(dets, gts, num_classes=1)
    assert result["map50"] == pytest.approx(1.0)
    assert result["per_class"][0]["num_gt"] == 1
    # Without the flag that box counts and is missed half the time.
    gts[0].pop("difficult")
    result = evaluate_detections([det([GT_BOX], [0.8], [0])], gts, num_classes=1)
    assert result["map50"] == pytest.approx(0.5)


def test_interpolation_helpers():
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert coco_ap(np.array([]), np.array([])) == 0.0
    # Recall capped at 0.5: COCO samples 0 beyond it (51 of 101 points at precision 1).
    assert coco_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(51 / 101)
    assert voc_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)


def test_table_and_errors():
    result = evaluate_detections([det([], [], [])], [gt([GT_BOX], [0])], num_classes=2)
    table = ap_table(result, ["cat", "dog"])
    assert "| cat | 1 | 0 | 0.0 | 0.0 |" in table and "| dog | 0 | 0 | — | — |" in table
    with pytest.raises(ValueError, match="one each per image"):
        evaluate_detections([], [gt([GT_BOX], [0])], num_classes=1)
    with pytest.raises(ValueError, match="include 0.5"):
        evaluate_detections([det([], [], [])], [gt([], [])], 1, iou_thresholds=[0.75])
