"""``attnlab eval``: a checkpoint's loss and accuracy on a validation set.

The model is rebuilt from the checkpoint's ``model_config``; the data options default to the
ones the checkpoint was trained with, and flags override them (e.g. another ``--data-dir``).

Example::

    attnlab eval --checkpoint runs/x/best.pt
    attnlab eval --checkpoint runs/x/last.pt --data-dir /data/cifar --json
"""

from __future__ import annotations

import argparse
import json
import sys

from torch.utils.data import DataLoader

from ..data import build_datasets
from ..engine.checkpoint import load_model
from ..engine.distributed import resolve_device
from ..engine.train import evaluate

_DATA_OPTIONS = ("data", "data_dir", "image_size", "val_size", "difficulty", "data_seed")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="evaluate a checkpoint on a validation set",
        description="Evaluate a checkpoint (last.pt / best.pt of attnlab train) on the validation "
        "split of its dataset, or of the dataset given here.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file")
    parser.add_argument("--data", help="dataset (default: the checkpoint's)")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="dataset folder (default: the checkpoint's)"
    )
    parser.add_argument(
        "--image-size", type=int, metavar="N", help="image size (default: the checkpoint's)"
    )
    parser.add_argument("--val-size", type=int, metavar="N", help="synthetic validation scenes")
    parser.add_argument("--difficulty", help="synthetic difficulty (default: the checkpoint's)")
    parser.add_argument("--data-seed", type=int, metavar="N", help="synthetic scene seed")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="(default: 256)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                        help="mixed precision (default: none)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON")


def evaluate_checkpoint(args: argparse.Namespace) -> dict:
    """Loss, accuracy and image count of the checkpoint on the validation split."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a CUDA device (here: {device}); use bf16")
    model, checkpoint = load_model(args.checkpoint)
    saved = checkpoint.get("config", {})
    options = {k: getattr(args, k) if getattr(args, k) is not None else saved.get(k)
               for k in _DATA_OPTIONS}  # fmt: skip
    options["data"] = options["data"] or "synthetic"
    # train_size too: the synthetic normalisation statistics come from the training scenes.
    _, val, info = build_datasets(
        options["data"], data_dir=options["data_dir"], image_size=options["image_size"],
        train_size=saved.get("train_size"), val_size=options["val_size"],
        difficulty=options["difficulty"] or "default", seed=options["data_seed"] or 0,
        augment=False,
    )  # fmt: skip
    trained = checkpoint.get("data_info") or {}
    for key in ("mean", "std"):
        if trained.get(key) and list(info.get(key) or []) != list(trained[key]):
            print(f"attnlab: warning: this data is normalised with {key} {info.get(key)}, the "
                  f"model was trained with {trained[key]}", file=sys.stderr)  # fmt: skip
    classes = model.config.get("num_classes")
    if classes is not None and info["num_classes"] != classes:
        raise ValueError(
            f"{args.checkpoint} predicts {classes} classes but {options['data']!r} has "
            f"{info['num_classes']}"
        )
    loader = DataLoader(val, batch_size=args.batch_size, num_workers=args.workers)
    result = evaluate(model.to(device), loader, device, amp=args.amp)
    return {**result, "checkpoint": args.checkpoint, "data": options["data"]}


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"loss {result['loss']:.4f}  acc {result['acc']:.4f}  "
            f"({result['count']} images, {result['data']} validation split)"
        )
    return 0
