"""Detection metrics: AP per class, VOC mAP@0.5 and COCO-style mAP@[.5:.95].

Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010; Lin et al.,
"Microsoft COCO: Common Objects in Context", arXiv 1405.0312.

- **Matching** (per class, per IoU threshold): detections of all images in descending score
  order (ties: earlier image and index first); each takes the not-yet-matched ground truth of
  its image with the highest IoU ≥ the threshold (COCO's rule; the VOC devkit instead takes the
  highest-IoU ground truth and counts a false positive if it is taken, which differs only for
  overlapping ground truths) → true positive; otherwise a false positive, including every
  detection in an image without ground truth of its class. Each ground truth is matched at most
  once, so duplicates are false positives. ``difficult`` ground truths (VOC) count in neither
  the positives nor the detections: a detection that matches no other ground truth but
  overlaps a difficult one by IoU ≥ the threshold is ignored (matched or not, as in VOC).
- **VOC AP** (``ap50``): all-point interpolation (VOC2010+): the area under the precision
  envelope (precision made non-increasing in recall) over the recall steps.
- **COCO-style AP** (``ap``): at the 10 IoU thresholds 0.50:0.05:0.95, precision envelope
  sampled at 101 recall points 0:0.01:1 (the first detection reaching each recall; 0 beyond the
  largest recall), averaged; then averaged over the thresholds. Every detection counts: no
  area ranges, no crowd regions, no cap. pycocotools (:func:`attnlab.metrics.coco.coco_evaluate`,
  the reference, with area ranges and crowd handling) keeps the 100 highest-scoring detections
  per image *and class*; the two agree exactly wherever no (image, class) pair has more than
  100 detections and no ground truth is a crowd (tested). A cap per image over all classes
  (``postprocess(max_det=100)``) is not COCO's rule: with many false positives it drops true
  positives that COCO scores.
- **Means**: over the classes that have at least one (non-difficult) ground truth; a class
  without ground truth has AP NaN and is excluded. A class with ground truth but no detections
  has AP 0. With no ground truth at all the means are NaN.

Example:
    >>> import torch
    >>> from attnlab.metrics import evaluate_detections
    >>> gts = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]
    >>> dets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]),
    ...          "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    >>> result = evaluate_detections(dets, gts, num_classes=2)
    >>> result["map50"], result["map"], result["per_class"][1]["num_gt"]
    (1.0, 1.0, 0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of N and M xyxy boxes (numpy, float64), N×M."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP from cumulative recall and precision (score order)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: non-increasing in recall
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]).sum())


def coco_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP (COCO): envelope precision at recall 0, 0.01, …, 1."""
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    sampled = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)
    return float(sampled.mean())


def _as_numpy(value: Any, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def _match_class(dets: list, gts: list, thresholds: Sequence[float]) -> tuple[np.ndarray, ...]:
    """(scores, tp T×D, ignored T×D, num_gt) for one class; dets/gts per image."""
    order = [(-s, i, j) for i, (_, scores) in enumerate(dets) for j, s in enumerate(scores)]
    order.sort()
    num_t = len(thresholds)
    tp = np.zeros((num_t, len(order)), dtype=bool)
    ignored = np.zeros((num_t, len(order)), dtype=bool)
    ious = [
        _iou(boxes, gt_boxes) if len(boxes) and len(gt_boxes) else None
        for (boxes, _), (gt_boxes, _) in zip(dets, gts, strict=True)
    ]
    matched = [np.zeros((num_t, len(g[0])), dtype=bool) for g in gts]
    thr = np.asarray(thresholds)[:, None]  # T×1
    for k, (_, i, j) in enumerate(order):
        if ious[i] is None:
            continue
        iou, difficult = ious[i][j], gts[i][1]  # G, G
        pool = ~difficult[None] & ~matched[i] & (iou >= thr)  # T×G
        hit = pool.any(1)
        best = np.where(pool, iou[None], -1.0).argmax(1)  # T
        matched[i][np.nonzero(hit)[0], best[hit]] = True
        tp[hit, k] = True
        # Otherwise, overlapping a difficult ground truth (matched or not) ignores it (VOC).
        ignored[:, k] = ~hit & (difficult[None] & (iou >= thr)).any(1)
    scores = np.array([-s for s, _, _ in order])
    num_gt = int(sum((~g[1]).sum() for g in gts))
    return scores, tp, ignored, num_gt


def evaluate_detections(
    detections: Sequence[dict[str, Any]],
    ground_truths: Sequence[dict[str, Any]],
    num_classes: int,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """mAP@0.5 (VOC all-point) and mAP@[.5:.95] (COCO 101-point) with a per-class table.

    Args:
        detections: per image, ``boxes`` (D×4 xyxy), ``scores`` (D), ``labels`` (D).
        ground_truths: per image, ``boxes`` (G×4 xyxy), ``labels`` (G), optional
            ``difficult`` (G bools).
        num_classes: K; labels are 0..K-1.
        iou_thresholds: thresholds of the COCO-style mean; must include 0.5.

    Returns:
        ``map50``, ``map`` (floats, NaN without ground truth), and ``per_class``: one dict per
        class with ``class``, ``ap50``, ``ap``, ``num_gt``, ``num_det``.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"evaluate_detections: {len(detections)} detection entries but "
            f"{len(ground_truths)} ground-truth entries (one each per image)"
        )
    thresholds = [float(t) for t in iou_thresholds]
    if 0.5 not in thresholds:
        raise ValueError(f"evaluate_detections: iou_thresholds must include 0.5, got {thresholds}")
    per_image = []
    for det, gt in zip(detections, ground_truths, strict=True):
        d_boxes, g_boxes = _as_numpy(det["boxes"], (-1, 4)), _as_numpy(gt["boxes"], (-1, 4))
        d_labels = _as_numpy(det["labels"], (-1,), np.int64)
        g_labels = _as_numpy(gt["labels"], (-1,), np.int64)
        scores = _as_numpy(det["scores"], (-1,))
        difficult = _as_numpy(gt.get("difficult", np.zeros(len(g_labels))), (-1,), bool)
        per_image.append((d_boxes, d_labels, scores, g_boxes, g_labels, difficult))
    rows = []
    for c in range(num_classes):
        dets = [(db[dl == c], s[dl == c]) for db, dl, s, *_ in per_image]
        gts = [(gb[gl == c], diff[gl == c]) for *_, gb, gl, diff in per_image]
        scores, tp, ignored, num_gt = _match_class(dets, gts, thresholds)
        aps_voc, aps_coco = [], []
        for t in range(len(thresholds)):
            keep = ~ignored[t]
            hits = tp[t][keep]
            cum_tp, cum_fp = np.cumsum(hits), np.cumsum(~hits)
            recall = cum_tp / max(num_gt, 1)
            precision = cum_tp / np.maximum(cum_tp + cum_fp, 1)
            aps_voc.append(voc_ap(recall, precision))
            aps_coco.append(coco_ap(recall, precision))
        nan = float("nan")
        rows.append(
            {
                "class": c,
                "ap50": aps_voc[thresholds.index(0.5)] if num_gt else nan,
                "ap": float(np.mean(aps_coco)) if num_gt else nan,
                "num_gt": num_gt,
                "num_det": len(scores),
            }
        )
    valid = [r for r in rows if r["num_gt"] > 0]
    return {
        "map50": float(np.mean([r["ap50"] for r in valid])) if valid else float("nan"),
        "map": float(np.mean([r["ap"] for r in valid])) if valid else float("nan"),
        "per_class": rows,
    }


def ap_table(result: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """The per-class result of :func:`evaluate_detections` as a Markdown table."""

    def fmt(value: float) -> str:
        return "—" if math.isnan(value) else f"{100 * value:.1f}"

    lines = ["| class | GT | detections | AP@0.5 | AP@[.5:.95] |", "|---|---:|---:|---:|---:|"]
    for row in result["per_class"]:
        name = class_names[row["class"]] if class_names else str(row["class"])
        lines.append(
            f"| {name} | {row['num_gt']} | {row['num_det']} | {fmt(row['ap50'])} | "
            f"{fmt(row['ap'])} |"
        )
    lines.append(f"| **mean** | | | {fmt(result['map50'])} | {fmt(result['map'])} |")
    return "\n".join(lines)
