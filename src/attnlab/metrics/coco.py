"""COCO evaluation through pycocotools, the reference implementation (the ``coco`` extra).

Lin et al., "Microsoft COCO: Common Objects in Context", arXiv 1405.0312. The detections and
ground truths of :func:`~attnlab.metrics.evaluate_detections` (per image: xyxy ``boxes``,
``labels``, ``scores``) are handed to ``pycocotools.cocoeval.COCOeval`` (``iouType="bbox"``),
which computes AP at IoU 0.50:0.05:0.95 with 101-point interpolation, AP at 0.5 and 0.75, AP
for small (area < 32²), medium and large (> 96²) objects, and AR at 1, 10 and 100 detections.

- **Detection caps** (``maxDets``): pycocotools keeps, for each image *and each category*, the
  highest-scoring ``maxDets`` detections (COCOeval.evaluateImg sorts the (image, category)
  pair's detections by score and cuts at ``maxDet``; computeIoU cuts at the largest cap too).
  The caps are 1, 10 and 100; AP uses 100. Capping per image over all categories beforehand
  (``postprocess(max_det=100)``) is a different, stricter rule: with many classes it removes
  detections COCOeval would score.
- **Area**: a ground truth's ``area`` when given (COCO's annotations hold the segment's area),
  else its box's area; detections' areas are their boxes'.
- **Crowd**: ground truths with ``iscrowd`` true are crowd regions: COCOeval matches
  detections to them (IoU = intersection / detection area) without counting them as positives
  or the detections as false positives. VOC's ``difficult`` flag is passed the same way, the
  closest COCO notion (VOC ignores detections on difficult objects likewise).
- Labels 0…K−1 become category ids 1…K (COCO's ids start at 1).

Example:
    >>> import torch
    >>> from attnlab.metrics.coco import coco_evaluate, coco_table
    >>> gts = [{"boxes": torch.tensor([[0.0, 0, 50, 50]]), "labels": torch.tensor([0])}]
    >>> dets = [{"boxes": torch.tensor([[0.0, 0, 50, 50], [60, 60, 90, 90]]),
    ...          "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    >>> result = coco_evaluate(dets, gts, num_classes=1)
    >>> round(result["map"], 4), round(result["map_medium"], 4), result["map_small"]
    (1.0, 1.0, -1.0)
    >>> print(coco_table(result).splitlines()[2])
    | map | 100.0 |
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# COCOeval.stats, in order (-1: no ground truth in that area range).
STAT_NAMES = (
    "map",
    "map50",
    "map75",
    "map_small",
    "map_medium",
    "map_large",
    "mar1",
    "mar10",
    "mar100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def require_pycocotools() -> Any:
    """The ``pycocotools.cocoeval`` module, or an ImportError naming the extra to install."""
    try:
        from pycocotools import cocoeval
    except ImportError as err:
        raise ImportError("COCO evaluation needs pycocotools: pip install 'attnlab[coco]'") from err
    return cocoeval


def _array(value: Any, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """xyxy → COCO's (x, y, width, height) of the top-left corner."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)


def to_coco(
    detections: Sequence[dict[str, Any]], ground_truths: Sequence[dict[str, Any]], num_classes: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(ground-truth dataset dict, detection result list) in COCO's JSON layout.

    Image ids are the list positions; category ids are labels + 1.
    """
    if len(detections) != len(ground_truths):
        raise ValueError(
            f"coco_evaluate: {len(detections)} detection entries but {len(ground_truths)} "
            f"ground-truth entries (one each per image)"
        )
    images, annotations, results = [], [], []
    for image_id, (det, gt) in enumerate(zip(detections, ground_truths, strict=True)):
        images.append({"id": image_id})
        g_boxes = _array(gt["boxes"], (-1, 4))
        g_labels = _array(gt["labels"], (-1,), np.int64)
        crowd = np.zeros(len(g_labels), dtype=bool)
        for key in ("iscrowd", "difficult"):
            if key in gt:
                crowd |= _array(gt[key], (-1,), bool)
        areas = _array(gt["area"], (-1,)) if "area" in gt else None
        for j, (box, label) in enumerate(zip(_xywh(g_boxes), g_labels, strict=True)):
            _check_label(label, num_classes, "ground truth", image_id)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO's annotation ids start at 1
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": box.tolist(),
                    "area": float(areas[j] if areas is not None else box[2] * box[3]),
                    "iscrowd": int(crowd[j]),
                }
            )
        d_boxes = _xywh(_array(det["boxes"], (-1, 4)))
        d_labels = _array(det["labels"], (-1,), np.int64)
        scores = _array(det["scores"], (-1,))
        for box, label, score in zip(d_boxes, d_labels, scores, strict=True):
            _check_label(label, num_classes, "detection", image_id)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": box.tolist(),
                    "score": float(score),
                }
            )
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    return dataset, results


def _check_label(label: int, num_classes: int, what: str, image_id: int) -> None:
    if not 0 <= label < num_classes:
        raise ValueError(
            f"coco_evaluate: {what} label {int(label)} in image {image_id} is outside "
            f"0…{num_classes - 1}"
        )


def coco_evaluate(
    detections: Sequence[dict[str, Any]],
    ground_truths: Sequence[dict[str, Any]],
    num_classes: int,
) -> dict[str, Any]:
    """COCO's 12 summary numbers and per-class AP, computed by pycocotools.

    Args:
        detections: per image, ``boxes`` (D×4 xyxy), ``scores`` (D), ``labels`` (D).
        ground_truths: per image, ``boxes`` (G×4 xyxy), ``labels`` (G), optional ``area``
            (G), ``iscrowd`` (G bools) and ``difficult`` (G bools, treated as crowd).
        num_classes: K; labels are 0…K−1.

    Returns:
        The :data:`STAT_NAMES` as floats (``map`` = AP@[.5:.95], ``map50``, …; -1 where COCOeval
        has no ground truth to average over) and ``per_class``: one dict per class with
        ``class``, ``ap`` (AP@[.5:.95], area all, 100 detections; NaN without ground truth),
        ``num_gt`` (non-crowd) and ``num_det``.
    """
    cocoeval = require_pycocotools()
    from pycocotools.coco import COCO

    dataset, results = to_coco(detections, ground_truths, num_classes)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports by printing
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:  # loadRes refuses an empty list: an empty result set instead
            dt.dataset = {"images": dataset["images"], "categories": dataset["categories"],
                          "annotations": []}  # fmt: skip
            dt.createIndex()
        evaluator = cocoeval.COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = zip(STAT_NAMES, evaluator.stats, strict=True)
    out: dict[str, Any] = {name: float(v) for name, v in stats}
    # precision: T×R×K×A×M (IoU thresholds, recall points, categories, area ranges, caps);
    # area "all" is index 0 and maxDets 100 the last; -1 marks "no ground truth".
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    rows = []
    for c in range(num_classes):
        values = precision[:, :, c]
        num_gt = sum(1 for a in dataset["annotations"]
                     if a["category_id"] == c + 1 and not a["iscrowd"])  # fmt: skip
        rows.append(
            {
                "class": c,
                "ap": float(values[values > -1].mean()) if (values > -1).any() else float("nan"),
                "num_gt": num_gt,
                "num_det": sum(1 for r in results if r["category_id"] == c + 1),
            }
        )
    out["per_class"] = rows
    return out


def coco_table(result: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """:func:`coco_evaluate`'s result as Markdown: the 12 numbers, then AP per class."""

    def fmt(value: float) -> str:
        return "—" if math.isnan(value) or value < 0 else f"{100 * value:.1f}"

    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {name} | {fmt(result[name])} |" for name in STAT_NAMES]
    lines += ["", "| class | GT | detections | AP@[.5:.95] |", "|---|---:|---:|---:|"]
    for row in result["per_class"]:
        name = class_names[row["class"]] if class_names else str(row["class"])
        lines.append(f"| {name} | {row['num_gt']} | {row['num_det']} | {fmt(row['ap'])} |")
    return "\n".join(lines)
