"""``attnlab compare``: the main job — attention variants side by side, same recipe.

With no arguments it trains the baseline and SE, CBAM, ECA, BAM and CA on the built-in
synthetic scenes (ResNet-20, 2 seeds each) and writes a table, ``results.json``,
``results.md`` and ``results.png`` to ``runs/compare-<timestamp>/``.
"""

from __future__ import annotations

import argparse
import time

from ..registry import list_classifiers


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..engine.compare import DEFAULT_RECIPE, QUICK_RECIPE, VARIANT_SETS

    parser = sub.add_parser(
        name,
        help="train attention variants side by side and compare accuracy and cost",
        description=(
            "Trains the baseline and SE, CBAM, ECA, BAM and CA (or the CBAM ablations) under "
            "one recipe, several seeds each, and reports accuracy mean ± std, parameters, "
            "MACs, seconds per epoch and inference latency. Defaults: "
            + ", ".join(f"{k}={v}" for k, v in DEFAULT_RECIPE.items())
            + "."
        ),
    )
    parser.add_argument(
        "--ablation",
        choices=[k for k in VARIANT_SETS if k != "main"],
        help="run an ablation instead of the main comparison (cbam: kernel 3 vs 7, "
        "channel/spatial order, channel pooling avg/max/both)",
    )
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant (default 2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in about a minute: "
        + ", ".join(f"{k}={v}" for k, v in QUICK_RECIPE.items()),
    )
    parser.add_argument("--model", choices=list_classifiers(), help="network (default resnet20)")
    parser.add_argument(
        "--data", choices=["synthetic", "cifar10", "cifar100", "folder"], help="dataset"
    )
    parser.add_argument("--data-dir", help="folder of the real dataset")
    parser.add_argument("--download", action="store_true", help="download CIFAR if absent")
    parser.add_argument("--epochs", type=int, help="training epochs per run")
    parser.add_argument("--train-size", type=int, help="synthetic training scenes")
    parser.add_argument("--val-size", type=int, help="synthetic validation scenes")
    parser.add_argument("--image-size", type=int, help="synthetic or folder image size")
    parser.add_argument("--batch-size", type=int, help="batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--workers", type=int, help="data-loading worker processes")
    parser.add_argument("--out", help="output folder (default runs/compare-<timestamp>)")


def run(args: argparse.Namespace) -> int:
    from ..cli import UsageError
    from ..engine.compare import DEFAULT_RECIPE, QUICK_RECIPE, VARIANT_SETS, compare

    variants = VARIANT_SETS[args.ablation or "main"]
    if args.variants:
        unknown = [v for v in args.variants if v not in variants]
        if unknown:
            raise UsageError(
                f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(variants)}"
            )
        variants = {v: variants[v] for v in args.variants}
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    recipe = dict(DEFAULT_RECIPE)
    if args.quick:
        recipe.update(QUICK_RECIPE)
    overrides = {
        "model": args.model,
        "data": args.data,
        "data_dir": args.data_dir,
        "download": args.download or None,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "workers": args.workers,
    }
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    if recipe["data"] != "synthetic":
        for key in ("train_size", "val_size"):
            recipe.pop(key, None)
    out = args.out or time.strftime("runs/compare-%Y%m%d-%H%M%S")
    compare(variants, recipe=recipe, seeds=list(range(args.seeds)), out=out)
    return 0
