"""COCO evaluation: pycocotools through coco_evaluate, against our own COCO-style mAP and
torchmetrics' MeanAveragePrecision (pycocotools backend); caps, area ranges, crowd regions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from attnlab.metrics import evaluate_detections
from attnlab.metrics.coco import STAT_NAMES, coco_evaluate, coco_table, to_coco

TM_NAMES = {
    "map": "map",
    "map50": "map_50",
    "map75": "map_75",
    "map_small": "map_small",
    "map_medium": "map_medium",
    "map_large": "map_large",
    "mar1": "mar_1",
    "mar10": "mar_10",
    "mar100": "mar_100",
    "mar_small": "mar_small",
    "mar_medium": "mar_medium",
    "mar_large": "mar_large",
}


def boxes_at(xy: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    return torch.cat([xy, xy + wh], 1)


def random_case(seed: int, images: int = 6, classes: int = 3):
    """Ground truths of all sizes and noisy detections: jittered copies, misses, false
    positives, duplicates."""
    g = torch.Generator().manual_seed(seed)
    gts, dets = [], []
    for _ in range(images):
        n = int(torch.randint(0, 6, (1,), generator=g))
        gt_boxes = boxes_at(torch.rand(n, 2, generator=g) * 300,
                            torch.rand(n, 2, generator=g) * 150 + 4)  # fmt: skip
        labels = torch.randint(0, classes, (n,), generator=g)
        keep = torch.rand(n, generator=g) > 0.2
        jitter = torch.randn(n, 4, generator=g) * 4
        fp = int(torch.randint(0, 5, (1,), generator=g))
        fp_boxes = boxes_at(torch.rand(fp, 2, generator=g) * 300,
                            torch.rand(fp, 2, generator=g) * 80 + 4)  # fmt: skip
        d_boxes = torch.cat([(gt_boxes + jitter)[keep], fp_boxes, gt_boxes[:1] + 2])
        d_labels = torch.cat([labels[keep], torch.randint(0, classes, (fp,), generator=g),
                              labels[:1]])  # fmt: skip
        d_boxes[:, 2:] = torch.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        gts.append({"boxes": gt_boxes, "labels": labels})
        dets.append({"boxes": d_boxes, "scores": torch.rand(len(d_boxes), generator=g),
                     "labels": d_labels})  # fmt: skip
    return dets, gts


@pytest.mark.parametrize("seed", range(4))
def test_matches_our_coco_style_map_and_torchmetrics(seed):
    dets, gts = random_case(seed)
    result = coco_evaluate(dets, gts, num_classes=3)
    # Below 100 detections per image and class, and without crowd, ours is COCO's AP.
    ours = evaluate_detections(dets, gts, num_classes=3)
    assert result["map"] == pytest.approx(ours["map"], abs=1e-12)
    for row, mine in zip(result["per_class"], ours["per_class"], strict=True):
        assert row["num_gt"] == mine["num_gt"] and row["num_det"] == mine["num_det"]
        if mine["num_gt"]:
            assert row["ap"] == pytest.approx(mine["ap"], abs=1e-12)
    # pycocotools' own thresholds: torchmetrics' defaults are float32 (torch.linspace), so a
    # recall of exactly 0.3 falls below its "0.3" (0.30000001) and samples the next precision.
    metric = MeanAveragePrecision(
        iou_type="bbox",
        backend="pycocotools",
        iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
        rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
    )
    metric.update(dets, gts)
    reference = metric.compute()
    for name in STAT_NAMES:
        # torchmetrics returns float32 tensors: equal to about 1e-7.
        assert result[name] == pytest.approx(float(reference[TM_NAMES[name]]), abs=1e-6), name


def test_cap_is_per_image_and_class():
    """pycocotools keeps 100 detections per (image, class): 60 false positives of each of two
    classes above one true positive per class keep both true positives (rank 61 < 100 in its
    class), where a cap of 100 per image over all classes would drop them (ranks 121, 122)."""
    gts = [{"boxes": torch.tensor([[0.0, 0, 40, 40], [100, 100, 140, 140]]),
            "labels": torch.tensor([0, 1])}]  # fmt: skip
    far = boxes_at(torch.arange(120.0)[:, None].repeat(1, 2) * 50 + 500, torch.full((120, 2), 30))
    dets = [{"boxes": torch.cat([far, gts[0]["boxes"]]),
             "scores": torch.cat([torch.linspace(0.99, 0.5, 120), torch.tensor([0.4, 0.3])]),
             "labels": torch.cat([torch.arange(120) % 2, torch.tensor([0, 1])])}]  # fmt: skip
    result = coco_evaluate(dets, gts, num_classes=2)
    # Each class: its true positive is 61st: precision 1/61 at recall 1 → AP 1/61 at every IoU.
    assert result["map"] == pytest.approx(1 / 61, rel=1e-6)
    assert result["mar100"] == pytest.approx(1.0)
    assert result["mar10"] == 0.0  # 10 per image and class: the true positives are cut
    # 150 false positives of one class push its true positive past the cap: AP 0.
    many = [{"boxes": torch.cat([far, far[:30] + 1, gts[0]["boxes"][:1]]),
             "scores": torch.cat([torch.linspace(0.99, 0.5, 150), torch.tensor([0.4])]),
             "labels": torch.zeros(151, dtype=torch.long)}]  # fmt: skip
    assert coco_evaluate(many, gts, num_classes=2)["per_class"][0]["ap"] == 0.0


def test_area_ranges():
    # small (20×20 = 400 < 32²) found; large (120×120 > 96²) missed; medium (50×50) found.
    gts = [{"boxes": torch.tensor([[0.0, 0, 20, 20], [100, 100, 220, 220], [300, 0, 350, 50]]),
            "labels": torch.tensor([0, 0, 0])}]  # fmt: skip
    dets = [{"boxes": torch.tensor([[0.0, 0, 20, 20], [300, 0, 350, 50]]),
             "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]  # fmt: skip
    result = coco_evaluate(dets, gts, num_classes=1)
    assert result["map_small"] == pytest.approx(1.0) and result["map_medium"] == pytest.approx(1.0)
    assert result["map_large"] == 0.0
    assert result["mar_large"] == 0.0 and result["mar100"] == pytest.approx(2 / 3)
    # A given area overrides the box's: the big box annotated as small moves to "small".
    gts[0]["area"] = torch.tensor([400.0, 500.0, 2500.0])
    result = coco_evaluate(dets, gts, num_classes=1)
    assert result["map_large"] == -1.0  # no large ground truth left
    assert result["mar_small"] == pytest.approx(0.5)


@pytest.mark.parametrize("key", ["iscrowd", "difficult"])
def test_crowd_regions_are_neither_positives_nor_false_positives(key):
    gts = [{"boxes": torch.tensor([[0.0, 0, 40, 40], [100, 100, 200, 200]]),
            "labels": torch.tensor([0, 0]), key: torch.tensor([False, True])}]  # fmt: skip
    # Highest score inside the crowd region (IoU over the detection's area: 1).
    dets = [{"boxes": torch.tensor([[120.0, 120, 150, 150], [0, 0, 40, 40]]),
             "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]  # fmt: skip
    result = coco_evaluate(dets, gts, num_classes=1)
    assert result["map"] == pytest.approx(1.0)
    assert result["per_class"][0]["num_gt"] == 1
    gts[0].pop(key)
    plain = coco_evaluate(dets, gts, num_classes=1)
    assert plain["map"] < 0.5 and plain["per_class"][0]["num_gt"] == 2


def test_empty_and_errors():
    gts = [{"boxes": torch.tensor([[0.0, 0, 40, 40]]), "labels": torch.tensor([0])}]
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}]
    result = coco_evaluate(empty, gts, num_classes=2)
    assert result["map"] == 0.0 and result["per_class"][0]["ap"] == 0.0
    assert math.isnan(result["per_class"][1]["ap"])
    with pytest.raises(ValueError, match="one each per image"):
        coco_evaluate(empty * 2, gts, num_classes=1)
    bad = [{"boxes": torch.tensor([[0.0, 0, 1, 1]]), "scores": torch.tensor([0.5]),
            "labels": torch.tensor([3])}]  # fmt: skip
    with pytest.raises(ValueError, match="detection label 3 in image 0"):
        coco_evaluate(bad, gts, num_classes=2)


def test_to_coco_layout():
    gts = [{"boxes": torch.tensor([[10.0, 20, 40, 60]]), "labels": torch.tensor([1])}]
    dets = [{"boxes": torch.tensor([[11.0, 21, 41, 61]]), "scores": torch.tensor([0.5]),
             "labels": torch.tensor([1])}]  # fmt: skip
    dataset, results = to_coco(dets, gts, num_classes=2)
    assert dataset["annotations"] == [{"id": 1, "image_id": 0, "category_id": 2,
                                       "bbox": [10.0, 20.0, 30.0, 40.0], "area": 1200.0,
                                       "iscrowd": 0}]  # fmt: skip
    assert results == [{"image_id": 0, "category_id": 2, "bbox": [11.0, 21.0, 30.0, 40.0],
                        "score": 0.5}]  # fmt: skip


def test_table():
    gts = [{"boxes": torch.tensor([[0.0, 0, 40, 40]]), "labels": torch.tensor([0])}]
    dets = [{"boxes": torch.tensor([[0.0, 0, 40, 40]]), "scores": torch.tensor([0.9]),
             "labels": torch.tensor([0])}]  # fmt: skip
    table = coco_table(coco_evaluate(dets, gts, num_classes=2), ["cat", "dog"])
    assert "| map | 100.0 |" in table and "| map_large | — |" in table
    assert "| cat | 1 | 1 | 100.0 |" in table and "| dog | 0 | 0 | — |" in table
