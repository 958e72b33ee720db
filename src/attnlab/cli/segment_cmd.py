"""``attnlab segment train | eval | predict``: semantic segmentation with DANet (Fu et al.,
CVPR 2019, arXiv 1809.02983) and its ablations.

- ``train``: one flag per ``SegmentConfig`` field (generated, so the CLI cannot drift from the
  config); precedence: field defaults < ``--config`` YAML < flags given. Writes config.yaml,
  metrics.jsonl, last.pt and best.pt to ``--out``.
- ``eval``: mIoU, pixel accuracy and per-class IoU of a checkpoint on its validation set (or
  ``--data-dir``/``--val-split``), single scale or ``--multi-scale``/``--flip``/``--sliding``.
- ``compare``: segmentation heads (FCN, DANet, NL, CCNet, PSA) trained side by side with one
  recipe and several seeds; mIoU and pixel accuracy with 95 % intervals, each head's
  difference from FCN with Welch's interval (see :mod:`attnlab.lab.segment_compare`).
- ``predict``: for each image, ``<out>/<name>_mask.png`` (an index PNG with the VOC colour
  palette: pixel values are class ids, viewers show colours) and ``<out>/<name>_overlay.png``
  (the image with the classes other than background tinted), both at the image's size.

Example:
    >>> voc_palette()[:4]
    [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]

Typical use::

    attnlab segment train --model danet_resnet20 --epochs 20 --out runs/seg
    attnlab segment eval --checkpoint runs/seg/best.pt --multi-scale --flip
    attnlab segment predict --checkpoint runs/seg/best.pt street.jpg --out masks
    attnlab segment compare --out runs/seg-compare          # 5 heads × 3 seeds
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.folder import load_image
from ..data.transforms import pil_to_tensor
from ..engine.distributed import resolve_device
from ..engine.files import save_png
from ..engine.tasks.segment import evaluate_checkpoint, load_segmenter, main
from ..engine.tasks.segment_config import MULTI_SCALES, SegmentConfig
from ..lab.segment_compare import DEFAULT_HEADS as COMPARE_HEADS
from ..lab.segment_compare import DEFAULT_SEEDS as COMPARE_SEEDS
from ..lab.segment_compare import QUICK_RECIPE, compare_heads
from ..segment.infer import predict_probs
from . import UsageError
from .config_flags import add_config_flags

ACTIONS = ("train", "eval", "predict", "compare")


def voc_palette(count: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: colour k spreads the bits of k over R, G and B."""
    colours = []
    for k in range(count):
        r = g = b = 0
        for shift in range(7, -1, -1):
            r |= ((k >> 0) & 1) << shift
            g |= ((k >> 1) & 1) << shift
            b |= ((k >> 2) & 1) << shift
            k >>= 3
        colours.append((r, g, b))
    return colours


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="semantic segmentation (DANet): train, eval, predict",
        description="Train DANet-style segmenters, evaluate checkpoints (mIoU), and write "
        "colour-mapped masks and overlays for images. See each action's --help.",
    )
    actions = parser.add_subparsers(dest="segment_action", metavar="ACTION")
    _add_train(actions)
    common = {"metavar": "PATH", "required": True, "help": "checkpoint of attnlab segment train"}
    evaluate = actions.add_parser(
        "eval",
        help="mIoU, pixel accuracy and per-class IoU of a checkpoint",
        description="Evaluate a checkpoint on its validation data (the config it was trained "
        "with, unless overridden here).",
    )
    evaluate.add_argument("--checkpoint", **common)
    evaluate.add_argument("--data-dir", metavar="DIR", help="VOC folder (default: checkpoint's)")
    evaluate.add_argument("--val-split", metavar="NAME", help="VOC split list (default: val)")
    evaluate.add_argument("--val-size", type=int, metavar="N", help="synthetic scenes")
    evaluate.add_argument("--batch-size", type=int, metavar="N", help="batch (synthetic data)")
    _add_inference_options(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    predict = actions.add_parser(
        "predict",
        help="colour-mapped masks and overlays (PNG) for images",
        description="Segment images at their own size; write <name>_mask.png (index PNG, VOC "
        "palette) and <name>_overlay.png for each into --out.",
    )
    predict.add_argument("--checkpoint", **common)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (jpg, png, …)")
    predict.add_argument("--out", default="runs/segment-predict", metavar="DIR",
                         help="output folder (default: runs/segment-predict)")  # fmt: skip
    predict.add_argument("--alpha", type=float, default=0.5,
                         help="overlay opacity of the class colours (default: 0.5)")  # fmt: skip
    _add_inference_options(predict)
    predict.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_compare(actions)


def _add_compare(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "compare",
        help="segmentation heads side by side: mIoU with 95 % intervals, differences from FCN",
        description="Train every head with every seed under one recipe on the synthetic "
        "scenes; write results.json and results.md (mIoU, pixel accuracy, intervals, "
        "differences from FCN and whether they are distinguishable from noise, parameters, "
        "MACs, training time, peak inference memory) into --out.",
    )
    seeds = " ".join(map(str, COMPARE_SEEDS))
    parser.add_argument(
        "--heads",
        nargs="+",
        default=list(COMPARE_HEADS),
        metavar="HEAD",
        help="heads (default: fcn danet nl ccnet psa; fcn is always added)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="N", help=f"seeds (default: {seeds}; --quick: 0 1)"
    )
    parser.add_argument("--backbone", metavar="NAME", help="backbone (default: resnet20)")
    parser.add_argument("--epochs", type=int, metavar="N", help="override the recipe's epochs")
    parser.add_argument(
        "--quick", action="store_true", help="tiny recipe for a smoke test (1 epoch, 32×32)"
    )
    parser.add_argument(
        "--out", default="runs/segment-compare", metavar="DIR", help="output folder"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--jobs", type=int, metavar="N",
        help="CPU runs at a time, one thread each (default: one per CPU core; 1: one by one)",
    )  # fmt: skip


def _add_train(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "train",
        help="train a segmenter (every SegmentConfig field is a flag; --config YAML)",
        description="Train a DANet-style segmenter. Every SegmentConfig field is a flag; values "
        "from --config YAML are overridden by flags given here. Outputs in --out: config.yaml, "
        "metrics.jsonl, last.pt, best.pt.",
    )
    add_config_flags(parser, SegmentConfig)


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--multi-scale", action="store_true",
                        help="average over --scales (default: single scale)")  # fmt: skip
    parser.add_argument("--scales", type=float, nargs="+", metavar="X",
                        help="scales of --multi-scale (default: 0.5 … 1.75)")  # fmt: skip
    parser.add_argument("--flip", action="store_true", help="also run on mirrored images")
    parser.add_argument("--sliding", action="store_true",
                        help="sliding --crop-size windows (large images)")  # fmt: skip
    parser.add_argument("--crop-size", type=int, metavar="N",
                        help="window of --sliding (default: the training crop)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def _overrides(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "segment_action", None)
    if action is None:
        raise UsageError("segment: choose an action: train, eval, predict or compare (see --help)")
    actions = {"train": _train, "eval": _eval, "predict": _predict, "compare": _compare}
    return actions[action](args)


def _compare(args: argparse.Namespace) -> int:
    recipe = dict(QUICK_RECIPE) if args.quick else {}
    recipe.update(_overrides(args, ("backbone", "epochs")))
    seeds = args.seeds or ([0, 1] if args.quick else list(COMPARE_SEEDS))
    try:
        result = compare_heads(
            args.heads, seeds=seeds, recipe=recipe, out=args.out, device=args.device,
            jobs=args.jobs,
        )  # fmt: skip
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(result["markdown"])
    print(f"→ {os.path.join(args.out, 'results.md')}")
    return 0


def _train(args: argparse.Namespace) -> int:
    summary = main(SegmentConfig.from_args(args))
    print(
        f"miou {summary['miou']:.4f}  pixel_acc {summary['pixel_accuracy']:.4f}  "
        f"best_miou {summary['best_miou']:.4f}  ({summary['epochs']} epochs, "
        f"{summary['epoch_time']:.1f} s/epoch)  → {summary['out']}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    names = ("data_dir", "val_split", "val_size", "batch_size", "scales", "crop_size")
    # Single scale unless asked here, whatever the training run evaluated with.
    options = {"multi_scale": args.multi_scale, "flip": args.flip, "sliding": args.sliding}
    result = evaluate_checkpoint(
        args.checkpoint, device=args.device, **_overrides(args, names), **options
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.checkpoint}: {result['images']} images, options {result['options']}")
    print(f"mIoU {result['miou']:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}")
    for name, iou in result["iou"].items():
        print(f"  {name:<16} {'absent' if iou is None else f'{iou:.4f}'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    results = predict_images(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        shares = ", ".join(f"{c} {s:.1%}" for c, s in result["classes"].items())
        print(f"{result['image']} → {result['mask']}, {result['overlay']}  ({shares})")
    return 0


def predict_images(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Writes each image's mask and overlay PNGs; returns [{"image", "mask", "overlay",
    "size": [width, height], "classes": {class: share of pixels}}, …]."""
    if not 0 <= args.alpha <= 1:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    stems = [os.path.splitext(os.path.basename(p))[0] for p in args.images]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise UsageError(f"two images would write the same outputs {duplicate}_*.png; rename one")
    device = resolve_device(args.device)
    model, checkpoint = load_segmenter(args.checkpoint)
    model.to(device)
    info = checkpoint.get("data_info") or {}
    mean = torch.tensor(info.get("mean", [0.0] * 3)).reshape(3, 1, 1)
    std = torch.tensor(info.get("std", [1.0] * 3)).reshape(3, 1, 1)
    classes = info.get("classes") or [str(c) for c in range(model.num_classes)]
    crop = args.crop_size or info.get("crop_size")
    if args.sliding and not crop:
        raise UsageError(f"--sliding needs --crop-size ({args.checkpoint} records none)")
    options = {"scales": tuple(args.scales or MULTI_SCALES) if args.multi_scale else (1.0,),
               "flip": args.flip, "crop_size": crop if args.sliding else None}  # fmt: skip
    palette = voc_palette()
    flat_palette = [v for colour in palette for v in colour]
    images = [load_image(p) for p in args.images]  # every file read before anything is written
    os.makedirs(args.out, exist_ok=True)
    results = []
    for path, stem, image in zip(args.images, stems, images, strict=True):
        pixels = pil_to_tensor(image)  # 3×H×W in [0, 1]
        batch = ((pixels - mean) / std)[None].to(device)
        labels = predict_probs(model, batch, **options).argmax(1)[0].cpu().numpy()
        mask = Image.fromarray(labels.astype(np.uint8)).convert("P")  # L → P keeps the ids
        mask.putpalette(flat_palette)
        mask_path = os.path.join(args.out, f"{stem}_mask.png")
        save_png(mask, mask_path)
        colours = np.asarray(palette, dtype=np.float32)[labels]  # H×W×3
        rgb = np.asarray(image, dtype=np.float32)
        tint = np.where((labels > 0)[..., None], args.alpha, 0.0)  # background left as it is
        blended = rgb * (1 - tint) + colours * tint
        overlay_path = os.path.join(args.out, f"{stem}_overlay.png")
        save_png(Image.fromarray(blended.round().astype(np.uint8)), overlay_path)
        counts = np.bincount(labels.ravel(), minlength=len(classes))
        shares = {classes[c]: float(n / labels.size) for c, n in enumerate(counts) if n}
        results.append({"image": path, "mask": mask_path, "overlay": overlay_path,
                        "size": [image.width, image.height], "classes": shares})  # fmt: skip
    return results
