"""``attnlab predict``: top-k classes of images under a trained checkpoint.

Each image is read with PIL, resized (shorter side) and centre-cropped to the training image
size, and normalised with the training mean and std stored in the checkpoint, the same
preprocessing as the validation set.

Example::

    attnlab predict --checkpoint runs/x/best.pt cat.jpg dog.png --topk 3
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..data.folder import load_image
from ..data.transforms import CenterCrop, Compose, Normalize, Resize, pil_to_tensor
from ..engine.checkpoint import load_model
from ..engine.distributed import resolve_device
from . import UsageError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="classify images with a checkpoint",
        description="Print the top-k classes and probabilities of each image under a checkpoint "
        "of attnlab train.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (jpg, png, …)")
    parser.add_argument(
        "--topk", type=int, default=5, metavar="K", help="classes per image (default: 5)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print JSON")


def predict(args: argparse.Namespace) -> list[dict]:
    """[{"image", "top": [{"class", "index", "prob"}, …]}, …] for ``args.images``."""
    if args.topk < 1:
        raise UsageError(f"--topk must be >= 1, got {args.topk}")
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.checkpoint)
    info = checkpoint.get("data_info") or {}
    config = checkpoint.get("config") or {}
    size = info.get("image_size") or config.get("image_size")
    if not size:
        raise ValueError(f"{args.checkpoint} does not record the training image size")
    steps = [Resize(size), CenterCrop(size)]
    if info.get("mean") and info.get("std"):
        steps.append(Normalize(info["mean"], info["std"]))
    else:
        print(
            f"attnlab: warning: {args.checkpoint} has no mean/std; not normalising", file=sys.stderr
        )
    preprocess = Compose(steps)
    in_chans = model.config.get("in_chans", 3)
    images = [preprocess(pil_to_tensor(load_image(p, "L" if in_chans == 1 else "RGB")))
              for p in args.images]  # fmt: skip
    with torch.no_grad():
        probs = model.to(device)(torch.stack(images).to(device)).float().softmax(1).cpu()
    names = info.get("classes") or [str(i) for i in range(probs.shape[1])]
    top = probs.topk(min(args.topk, probs.shape[1]), dim=1)
    return [
        {"image": path, "top": [{"class": names[i], "index": i, "prob": p}
                                for p, i in zip(values.tolist(), indices.tolist(), strict=True)]}
        for path, values, indices in zip(args.images, top.values, top.indices, strict=True)
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    results = predict(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["image"])
        for row in result["top"]:
            print(f"  {row['prob']:.4f}  {row['class']}")
    return 0
