"""``attnlab viz``: what a checkpoint's attention does on images — maps, Grad-CAM, scores.

Input: image files (preprocessed like ``attnlab predict``: resized, centre-cropped,
normalised with the checkpoint's statistics) or, with no files, the first ``--count`` images
of the checkpoint's validation set (or ``--data``). Output folder:

- ``gallery.png``: one row per image (``--rows``): the input, Grad-CAM (or Grad-CAM++) at the
  last stage (or ``--layer``), then the last attention module of each stage (``--modules
  all``: every module). Spatial modules show their map as an overlay (BAM's spatial branch
  through a sigmoid, Coordinate Attention's g^h·g^w averaged over channels, PAM's received
  attention), channel-only modules their channel weights as bars, DANet CAM its C×C affinity;
- ``gradcam/<k>-<name>.png``: each image's Grad-CAM overlay, enlarged to at least 128 pixels;
- ``channel-weights.png``: per-stage histograms of every channel weight (where the model has
  channel weights: SE, ECA, CBAM and BAM's channel branches, CA's mean gate per channel);
- ``summary.json``: the images with their predictions, the Grad-CAM settings, every map
  (module, stage, kind, shape, range) and, on synthetic scenes (which have object masks), the
  localisation scores (pointing game, energy in mask) of Grad-CAM and the spatial maps.

A short table of the modules and the scores is printed.

Example::

    attnlab viz --checkpoint runs/x/best.pt --out runs/x/viz
    attnlab viz --checkpoint runs/x/best.pt cat.jpg dog.png --method gradcam++ --target label
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="attention maps, Grad-CAM and localisation scores of a checkpoint",
        description="Write a gallery of attention maps and Grad-CAM, per-image overlays, "
        "channel-weight histograms and a summary for image files or a validation set "
        "(synthetic scenes add localisation scores). Needs matplotlib: pip install attnlab[viz].",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (default: data)")
    parser.add_argument("--data", help="dataset when no images are given (default: the "
                        "checkpoint's): synthetic, cifar10, cifar100, folder")  # fmt: skip
    parser.add_argument("--data-dir", metavar="DIR", help="dataset folder (default: checkpoint's)")
    parser.add_argument("--count", type=int, default=16, metavar="N",
                        help="dataset images to use (default: 16)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=6, metavar="N",
                        help="images in the gallery (default: 6)")  # fmt: skip
    parser.add_argument("--layer", metavar="NAME", help="Grad-CAM layer (default: last stage)")
    parser.add_argument("--method", default="gradcam", choices=("gradcam", "gradcam++"))
    parser.add_argument("--target", default="predicted", metavar="CLASS",
                        help="Grad-CAM class: predicted (default), label (the true class, "
                        "dataset images), or a class index or name")  # fmt: skip
    parser.add_argument(
        "--modules",
        default="per-stage",
        choices=("per-stage", "all"),
        help="attention modules in the gallery (default: the last of each stage)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--out", help="output folder (default runs/viz-<timestamp>)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _file_images(args: argparse.Namespace, model: Any, checkpoint: dict) -> tuple:
    """(images, labels: None, sources, mean, std, scenes: None) for image files, preprocessed
    as ``attnlab predict`` does."""
    import torch

    from ..data.folder import load_image
    from ..data.transforms import CenterCrop, Compose, Normalize, Resize, pil_to_tensor

    info, config = checkpoint.get("data_info") or {}, checkpoint.get("config") or {}
    size = info.get("image_size") or config.get("image_size")
    if not size:
        raise ValueError(f"{args.checkpoint} does not record the training image size")
    mean, std = info.get("mean"), info.get("std")
    steps = [Resize(size), CenterCrop(size)] + ([Normalize(mean, std)] if mean and std else [])
    mode = "L" if model.config.get("in_chans", 3) == 1 else "RGB"
    preprocess = Compose(steps)
    images = torch.stack([preprocess(pil_to_tensor(load_image(p, mode))) for p in args.images])
    return images, None, list(args.images), mean, std, None


def _data_images(args: argparse.Namespace, checkpoint: dict) -> tuple:
    """(images, labels, sources, mean, std, scenes or None) from the validation split."""
    import torch

    from ..data.transforms import Normalize

    config, info = checkpoint.get("config") or {}, checkpoint.get("data_info") or {}
    name = args.data or config.get("data") or "synthetic"
    if name == "synthetic":
        from ..data.synthetic import SyntheticScenes

        scenes = SyntheticScenes(
            split="val", length=args.count, size=config.get("image_size") or 32,
            num_classes=int(info.get("num_classes") or 6),
            difficulty=config.get("difficulty") or "default", seed=config.get("data_seed") or 0,
        )  # fmt: skip
        mean, std = info.get("mean"), info.get("std")
        items = [scenes.scene(i) for i in range(len(scenes))]
        normalize = Normalize(mean, std) if mean and std else (lambda image: image)
        images = torch.stack([normalize(s.image) for s in items])  # n×3×S×S
        sources = [f"synthetic val #{i}" for i in range(len(items))]
        return images, [s.label for s in items], sources, mean, std, scenes
    from ..data import build_datasets

    _, val, data_info = build_datasets(
        name, data_dir=args.data_dir or config.get("data_dir"),
        image_size=config.get("image_size"), augment=False,
    )  # fmt: skip
    items = [val[i] for i in range(min(args.count, len(val)))]
    images = torch.stack([image for image, _ in items])
    sources = [f"{name} val #{i}" for i in range(len(items))]
    labels = [int(label) for _, label in items]
    return images, labels, sources, data_info["mean"], data_info["std"], None


def _target(args: argparse.Namespace, labels: list[int] | None, classes: list[str]) -> Any:
    from . import UsageError

    if args.target == "predicted":
        return None
    if args.target == "label":
        if labels is None:
            raise UsageError("--target label needs dataset images (image files have no label)")
        return labels
    if args.target in classes:
        return classes.index(args.target)
    try:
        index = int(args.target)
    except ValueError:
        raise UsageError(
            f"--target {args.target!r}: not predicted, label, an index or a class "
            f"({', '.join(classes)})"
        ) from None
    if not 0 <= index < len(classes):
        raise UsageError(f"--target {index}: not a class index 0..{len(classes) - 1}")
    return index


def visualize(args: argparse.Namespace) -> dict[str, Any]:
    """Writes the outputs described in the module docstring; returns the summary."""
    from ..engine.checkpoint import load_model
    from ..engine.distributed import resolve_device
    from ..viz import maps as vmaps
    from ..viz import plots
    from ..viz.gradcam import grad_cam
    from ..viz.localization import localization_score
    from . import UsageError

    for flag in ("count", "rows"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    try:
        plots.require_matplotlib()
    except ImportError as err:
        raise UsageError(str(err)) from None
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.checkpoint)
    model = model.to(device).eval()
    if args.images:
        images, labels, sources, mean, std, scenes = _file_images(args, model, checkpoint)
    else:
        images, labels, sources, mean, std, scenes = _data_images(args, checkpoint)
    info = checkpoint.get("data_info") or {}
    classes = list(info.get("classes") or [str(i) for i in range(model.config["num_classes"])])
    target = _target(args, labels, classes)
    out = args.out or time.strftime("runs/viz-%Y%m%d-%H%M%S")
    os.makedirs(out, exist_ok=True)
    images = images.to(device)
    rows = min(args.rows, len(images))
    row_target = target[:rows] if isinstance(target, list) else target
    columns, shown = plots.model_columns(
        model, images[:rows], layer=args.layer, method=args.method, target=row_target,
        modules=args.modules, class_names=classes,
    )  # fmt: skip
    row_labels = [f"true {classes[t]}" for t in labels[:rows]] if labels else None
    files = [plots.save_gallery(images[:rows].cpu(), columns, os.path.join(out, "gallery.png"),
                                mean=mean, std=std, row_labels=row_labels)]  # fmt: skip

    cam = grad_cam(model, images, layer=args.layer, target=target, method=args.method)
    scale = max(1, -(-128 // max(images.shape[-2:])))  # at least 128 pixels
    for k, (image, source) in enumerate(zip(images, sources, strict=True)):
        stem = os.path.splitext(os.path.basename(source))[0] if args.images else ""
        stem = "".join(c if c.isalnum() else "-" for c in stem).strip("-")
        path = os.path.join(out, "gradcam", f"{k:02d}-{stem}.png" if stem else f"{k:02d}.png")
        files.append(plots.save_overlay(plots.to_display(image, mean, std), cam.maps[k], path,
                                        scale=scale))  # fmt: skip
    _, entries = vmaps.collect_attention(model, images)
    by_stage = vmaps.weights_by_stage(entries)
    if by_stage:
        path = os.path.join(out, "channel-weights.png")
        files.append(plots.save_channel_histograms(by_stage, path))

    probs = cam.logits.float().softmax(1)
    predicted = probs.argmax(1).tolist()
    summary = {
        "checkpoint": args.checkpoint,
        "model": {k: model.config.get(k) for k in ("name", "attn", "stage_attn", "num_classes")},
        "images": [
            {
                "source": source,
                "label": classes[labels[k]] if labels else None,
                "predicted": classes[p],
                "prob": float(probs[k, p]),
                "explained": classes[int(cam.classes[k])],
            }
            for k, (source, p) in enumerate(zip(sources, predicted, strict=True))
        ],  # fmt: skip
        "gradcam": {"layer": cam.layer, "method": args.method, "target": args.target},
        "gallery_modules": shown["modules"],
        "maps": vmaps.describe(entries),
        "localization": None,
        "files": [os.path.relpath(f, out) for f in files],
    }
    if scenes is not None:
        summary["localization"] = localization_score(
            model, scenes, normalize=(mean, std) if mean and std else None, layer=args.layer,
            method=args.method,
        )  # fmt: skip
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    summary["out"] = out
    return summary


def _table(summary: dict[str, Any]) -> str:
    modules: dict[str, list[dict]] = {}
    for row in summary["maps"]:
        modules.setdefault(row["module"], []).append(row)
    lines = ["| module | stage | maps (kind: shape, min…max) |", "|---|---|---|"]
    for module, rows in modules.items():
        maps = "; ".join(
            f"{r['kind']}: {'×'.join(map(str, r['shape'][1:]))}, {r['min']:.2f}…{r['max']:.2f}"
            for r in rows
        )
        lines.append(f"| {module or '(model)'} | {rows[0]['stage'] or '-'} | {maps} |")
    if not modules:
        lines.append("| (no attention modules) | - | - |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = visualize(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(_table(summary))
    loc = summary["localization"]
    if loc is not None:
        cam = loc["gradcam"]
        line = (
            f"localisation on {loc['count']} scenes (true class): Grad-CAM pointing "
            f"{cam['pointing']:.3f}, energy {cam['energy']:.3f}"
        )
        if loc["attention"]:
            line += (f"; attention maps pointing {loc['attention']['pointing']:.3f}, energy "
                     f"{loc['attention']['energy']:.3f}")  # fmt: skip
        print(line)
    print(f"{len(summary['files'])} files in {summary['out']}")
    return 0
