"""``attnlab detect train | eval | predict``: YOLOv4-tiny with attention in the neck.

- ``train``: one flag per :class:`~attnlab.engine.tasks.detect_config.DetectConfig` field
  (precedence: field defaults < ``--config`` YAML < flags given); writes config.yaml,
  metrics.jsonl, last.pt, best.pt to ``--out`` (a new or empty folder; see docs/training.md).
- ``eval``: a checkpoint on a data split (by default the checkpoint's own data and validation
  split): mAP@0.5, mAP@[.5:.95] and the per-class AP table (Markdown; ``--json`` for a file);
  ``--metric coco``: pycocotools' 12 numbers (AP by IoU and area, AR) and AP per class.
- ``predict``: image files → letterboxed inference → boxes in the original image's pixels →
  ``<out>/<name>.png`` (the image at its own size, boxes labelled with class and score) and
  ``<out>/detections.json``.

Example:
    >>> from attnlab.cli import main
    >>> main(["detect", "train", "--input-size", "100"])
    2

Typical use::

    attnlab detect train --phi 2 --input-size 128 --epochs 10 --out runs/det
    attnlab detect eval --checkpoint runs/det/best.pt
    attnlab detect predict --checkpoint runs/det/best.pt photo.jpg --out runs/det/pred
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

from ..data.folder import load_image
from ..engine.files import atomic_write_text, save_png
from ..engine.metrics_log import json_ready
from ..engine.tasks.detect import (
    DetectConfig,
    build_dataset,
    evaluate,
    load_detector,
    main,
    predict,
)
from ..metrics.coco import coco_evaluate, coco_table, require_pycocotools
from ..metrics.detection import ap_table
from ..viz.draw import draw_boxes
from . import UsageError
from .config_flags import add_config_flags


def _add_inference_flags(parser: argparse.ArgumentParser, conf: float, nms: float) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="last.pt or best.pt")
    parser.add_argument(
        "--input-size",
        type=int,
        metavar="N",
        help="letterbox side, a multiple of 32 (default: the training size)",
    )
    parser.add_argument(
        "--conf-threshold",
        type=float,
        default=conf,
        metavar="X",
        help=f"keep detections scoring at least this (default: {conf})",
    )
    parser.add_argument("--nms-threshold", type=float, default=nms, metavar="X",
                        help=f"class-aware NMS IoU threshold (default: {nms})")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="images per forward pass (default: 8)")  # fmt: skip
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="object detection: YOLOv4-tiny with attention (train, eval, predict)",
        description="Object detection with YOLOv4-tiny and attention in its neck (phi: 0 none, "
        "1 SE, 2 CBAM, 3 ECA, 4 CA, or --attn NAME).",
    )
    actions = parser.add_subparsers(dest="detect_command", metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a detector",
        description="Train YOLOv4-tiny. Every DetectConfig field is a flag; values from --config "
        "YAML are overridden by flags given here. Outputs in --out: config.yaml, metrics.jsonl "
        "(per epoch: losses, mAP@0.5, mAP@[.5:.95], time), last.pt, best.pt (best mAP@0.5).",
    )
    add_config_flags(train, DetectConfig)
    evaluate = actions.add_parser(
        "eval",
        help="mAP of a checkpoint, with a per-class AP table",
        description="Evaluate a checkpoint: mAP@0.5 (VOC all-point), mAP@[.5:.95] (COCO "
        "101-point) and per-class AP, in the original images' pixels. Data options default to "
        "the checkpoint's own (its validation split).",
    )
    _add_inference_flags(evaluate, conf=0.01, nms=0.5)
    evaluate.add_argument("--data", choices=("synthetic", "voc", "yolo"), help="dataset")
    evaluate.add_argument("--data-dir", metavar="DIR", help="voc root or yolo folder")
    evaluate.add_argument("--split", help="split to evaluate (synthetic: val or test)")
    evaluate.add_argument("--class-names", metavar="NAMES", help="yolo: names or a names file")
    evaluate.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    evaluate.add_argument("--metric", choices=("voc", "coco"), default="voc",
                          help="voc: our VOC all-point and COCO-style AP (default); coco: "
                          "pycocotools' 12 numbers (needs the coco extra)")  # fmt: skip
    predict = actions.add_parser(
        "predict",
        help="draw detected boxes on images (PNG + JSON)",
        description="Detect objects in image files: each is letterboxed to the input size, and "
        "the boxes, mapped back to the original image, are drawn with class names and scores "
        "into <out>/<name>.png (original size); all detections go to <out>/detections.json.",
    )
    _add_inference_flags(predict, conf=0.25, nms=0.45)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (jpg, png, …)")
    predict.add_argument("--out", default="runs/detect/predict", metavar="DIR",
                         help="output folder (default: runs/detect/predict)")  # fmt: skip
    predict.add_argument("--max-det", type=int, default=100, metavar="N",
                         help="at most N detections per image (default: 100)")  # fmt: skip
    parser.set_defaults(detect_parser=parser)


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "detect_command", None)
    if action is None:
        args.detect_parser.print_help()
        return 2
    del args.detect_parser
    return {"train": _train, "eval": _eval, "predict": _predict}[action](args)


def _train(args: argparse.Namespace) -> int:
    summary = main(DetectConfig.from_args(args))
    print(
        f"mAP@0.5 {summary['map50']:.4f}  mAP@[.5:.95] {summary['map']:.4f}  best mAP@0.5 "
        f"{summary['best_map50']:.4f}  ({summary['epochs']} epochs, "
        f"{summary['epoch_time']:.1f} s/epoch)  → {summary['out']}"
    )
    return 0


def _load(args: argparse.Namespace):
    """(model, checkpoint, input size) after checking the inference options."""
    for name in ("conf_threshold", "nms_threshold"):
        if not 0 <= getattr(args, name) <= 1:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    model, checkpoint = load_detector(args.checkpoint)
    size = args.input_size or checkpoint.get("input_size") or model.config["input_size"][0]
    if size < 32 or size % 32:
        raise UsageError(f"--input-size must be a positive multiple of 32, got {size}")
    return model.to(args.device), checkpoint, size


def _eval(args: argparse.Namespace) -> int:
    model, checkpoint, size = _load(args)
    saved = dict(checkpoint.get("config") or {})
    given = {"data": args.data, "data_dir": args.data_dir, "class_names": args.class_names}
    saved.update({k: v for k, v in given.items() if v is not None})
    saved.update(input_size=size, resume=None)
    config = DetectConfig.from_dict(saved, source=args.checkpoint)
    split = args.split or ("val" if config.data == "synthetic" else config.val_split)
    dataset = build_dataset(config, split)
    classes = checkpoint.get("classes") or [str(i) for i in range(model.config["num_classes"])]
    if list(dataset.classes) != list(classes):
        raise ValueError(f"the data's classes {dataset.classes} differ from the checkpoint's "
                         f"{classes}")  # fmt: skip
    thresholds = {"conf_threshold": args.conf_threshold, "nms_threshold": args.nms_threshold}
    if args.metric == "coco":
        result = _coco(model, dataset, size, args.batch_size, thresholds)
    else:
        result = evaluate(model, dataset, size, batch_size=args.batch_size, **thresholds)
    print(f"{args.checkpoint} on {config.data} {split} ({len(dataset)} images, input {size})")
    print(coco_table(result, classes) if args.metric == "coco" else ap_table(result, classes))
    if args.json:
        record = {"checkpoint": args.checkpoint, "split": split, **result}
        atomic_write_text(args.json, json.dumps(json_ready(record), indent=2))
    return 0


def _coco(model, dataset, size: int, batch_size: int, thresholds: dict) -> dict:
    """pycocotools' evaluation (:mod:`attnlab.metrics.coco`; VOC's difficult boxes become
    crowd regions) of the detections ``evaluate`` scores, without a cap per image."""
    try:
        require_pycocotools()
    except ImportError as err:
        raise UsageError(str(err)) from None
    num_classes = model.config["num_classes"]
    # No cap per image here: pycocotools keeps 100 per image and class itself.
    options = {**thresholds, "max_det": 100 * num_classes}
    detections, truths = [], []
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        pairs = [dataset[i] for i in indices]
        detections += predict(model, [image for image, _ in pairs], size, **options)
        for i, (_, targets) in zip(indices, pairs, strict=True):
            if hasattr(dataset, "annotation"):  # file datasets: every box, difficult flagged
                rec = dataset.annotation(i)
                truths.append({k: rec[k] for k in ("boxes", "labels", "difficult")})
            else:
                truths.append({"boxes": targets[:, 1:5], "labels": targets[:, 0].long()})
    return coco_evaluate(detections, truths, num_classes)


def _predict(args: argparse.Namespace) -> int:
    model, checkpoint, size = _load(args)
    if args.max_det < 1:
        raise UsageError(f"--max-det must be >= 1, got {args.max_det}")
    classes = checkpoint.get("classes") or [str(i) for i in range(model.config["num_classes"])]
    os.makedirs(args.out, exist_ok=True)
    records = []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        pictures = []
        for path in paths:
            pictures.append(load_image(path, "RGB"))  # ValueError/OSError naming the file: exit 2
        tensors = [torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1)
                   for p in pictures]  # fmt: skip
        dets = predict(model, tensors, size, conf_threshold=args.conf_threshold,
                       nms_threshold=args.nms_threshold, max_det=args.max_det)  # fmt: skip
        for path, picture, det in zip(paths, pictures, dets, strict=True):
            rows = [
                {
                    "class": classes[int(c)],
                    "label": int(c),
                    "score": round(float(s), 4),
                    "box": [round(v, 1) for v in b.tolist()],
                }
                for b, s, c in zip(det["boxes"], det["scores"], det["labels"], strict=True)
            ]
            target = _unique_png(args.out, path, records)
            save_png(draw_detections(picture, rows), target)
            records.append({"image": path, "output": target, "detections": rows})
            print(f"{path}: {len(rows)} detections → {target}")
    atomic_write_text(os.path.join(args.out, "detections.json"), json.dumps(records, indent=2))
    return 0


def _unique_png(out: str, path: str, records: list[dict]) -> str:
    """``out/<stem>.png``, with ``_2``, ``_3``… when two inputs share a stem."""
    stem = os.path.splitext(os.path.basename(path))[0]
    taken = {r["output"] for r in records}
    target, n = os.path.join(out, f"{stem}.png"), 1
    while target in taken:
        n += 1
        target = os.path.join(out, f"{stem}_{n}.png")
    return target


def draw_detections(picture: Image.Image, rows: list[dict]) -> Image.Image:
    """A copy of the PIL image with each box outlined and labelled ``class score``
    (:func:`attnlab.viz.draw.draw_boxes`)."""
    image = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)  # 3×H×W uint8
    names = {row["label"]: row["class"] for row in rows}
    class_names = [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
    drawn = draw_boxes(image, torch.tensor([row["box"] for row in rows]).reshape(-1, 4),
                       torch.tensor([row["label"] for row in rows], dtype=torch.long),
                       torch.tensor([row["score"] for row in rows]), class_names)  # fmt: skip
    return Image.fromarray(drawn.permute(1, 2, 0).numpy())
