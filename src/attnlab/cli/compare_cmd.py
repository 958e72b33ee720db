"""``attnlab compare``: the main job — attention variants side by side, same recipe.

With no arguments it trains the baseline and SE, CBAM, ECA, BAM and CA on the built-in
synthetic scenes with a data-limited training set (ResNet-20, 3 seeds each, runs in parallel
processes) and writes tables with 95 % intervals, learning curves, a harder-split robustness column,
``results.json``, ``results.md``, ``results.png`` and ``curves.png`` to
``runs/compare-<timestamp>/``.
"""

from __future__ import annotations

import argparse
import time

from ..registry import list_classifiers


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..data.synthetic import DIFFICULTIES
    from ..lab.compare import DEFAULT_RECIPE, DEFAULT_SEEDS, QUICK_RECIPE, QUICK_SEEDS, VARIANT_SETS

    parser = sub.add_parser(
        name,
        help="train attention variants side by side and compare accuracy and cost",
        description=(
            "Trains the baseline and SE, CBAM, ECA, BAM and CA (or the CBAM ablations, or any "
            "registered attention names) under one recipe, several seeds each, and reports "
            "accuracy with 95 % intervals, each variant's difference from the baseline "
            "(Welch) and whether it is distinguishable from noise, accuracy on a harder "
            "split, learning curves, parameters, MACs, seconds per epoch and latency. "
            "Defaults: " + ", ".join(f"{k}={v}" for k, v in DEFAULT_RECIPE.items()) + "."
        ),
    )
    parser.add_argument(
        "--ablation",
        choices=[k for k in VARIANT_SETS if k != "main"],
        help="run an ablation instead of the main comparison (cbam: kernel 3 vs 7, "
        "channel/spatial order, channel pooling avg/max/both)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help="only these variants: names of the set, or any registered attention (attnlab list)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"seeds per variant (default {DEFAULT_SEEDS}; {QUICK_SEEDS} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in about a minute: "
        + ", ".join(f"{k}={v}" for k, v in QUICK_RECIPE.items()),
    )
    parser.add_argument(
        "--model", metavar="NAME",
        help="network (default resnet20): " + ", ".join(list_classifiers())
        + ", or a torchvision / timm classifier as tv:<name> / timm:<name>",
    )  # fmt: skip
    parser.add_argument(
        "--data", choices=["synthetic", "cifar10", "cifar100", "folder"], help="dataset"
    )
    parser.add_argument("--data-dir", help="folder of the real dataset")
    parser.add_argument("--download", action="store_true", help="download CIFAR if absent")
    parser.add_argument(
        "--difficulty",
        help="synthetic scene difficulty: "
        + ", ".join(DIFFICULTIES)
        + f" (default {DEFAULT_RECIPE['difficulty']})",
    )
    parser.add_argument("--epochs", type=int, help="training epochs per run")
    parser.add_argument("--train-size", type=int, help="synthetic training scenes")
    parser.add_argument("--val-size", type=int, help="synthetic validation scenes")
    parser.add_argument("--image-size", type=int, help="synthetic or folder image size")
    parser.add_argument("--batch-size", type=int, help="batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument(
        "--precise-bn-images",
        type=int,
        help="BatchNorm statistics recomputed over this many training images before each "
        "evaluation (0: off)",
    )
    parser.add_argument("--workers", type=int, help="data-loading worker processes per run")
    parser.add_argument(
        "--jobs", type=int, help="runs at a time (default: one per CPU core; 1: one by one)"
    )
    parser.add_argument(
        "--threads", type=int, help="threads per run (default: 1 when runs are parallel)"
    )
    parser.add_argument(
        "--robust-scenes", type=int, help="scenes of the harder split (0: no robustness column)"
    )
    parser.add_argument("--out", help="output folder (default runs/compare-<timestamp>)")


def run(args: argparse.Namespace) -> int:
    from ..cli import UsageError
    from ..lab.compare import (
        DEFAULT_RECIPE,
        DEFAULT_SEEDS,
        QUICK_RECIPE,
        QUICK_ROBUST_SCENES,
        QUICK_SEEDS,
        ROBUST_SCENES,
        compare,
        variant_options,
    )

    try:
        variants = variant_options(args.ablation or "main", args.variants)
    except ValueError as err:
        raise UsageError(str(err).removeprefix("compare: ")) from err
    for flag, value, low in (("--seeds", args.seeds, 1), ("--jobs", args.jobs, 1),
                             ("--threads", args.threads, 1),
                             ("--robust-scenes", args.robust_scenes, 0)):  # fmt: skip
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    seeds = args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    recipe = dict(DEFAULT_RECIPE)
    if args.quick:
        recipe.update(QUICK_RECIPE)
    overrides = {
        "model": args.model,
        "data": args.data,
        "data_dir": args.data_dir,
        "download": args.download or None,
        "difficulty": args.difficulty,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precise_bn_images": args.precise_bn_images,
        "workers": args.workers,
    }
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    if recipe["data"] != "synthetic":
        for key in ("train_size", "val_size", "difficulty"):
            recipe.pop(key, None)
    _check_recipe(recipe, UsageError)
    robust = args.robust_scenes
    if robust is None:
        robust = QUICK_ROBUST_SCENES if args.quick else ROBUST_SCENES
    out = args.out or time.strftime("runs/compare-%Y%m%d-%H%M%S")
    compare(variants, recipe=recipe, seeds=list(range(seeds)), out=out, jobs=args.jobs,
            threads=args.threads, robust_scenes=robust)  # fmt: skip
    return 0


def _check_recipe(recipe: dict, error: type[Exception]) -> None:
    """Bad recipe values fail here, once, rather than in every run's process."""
    import os

    from ..engine.config import TrainConfig

    try:
        TrainConfig(**recipe, progress=False)
    except ValueError as err:
        raise error(str(err)) from err
    data_dir = recipe.get("data_dir")
    real = recipe["data"] != "synthetic" and not recipe.get("download")
    if real and data_dir and not os.path.isdir(data_dir):
        raise error(f"data directory not found: {data_dir}")
    if recipe["data"] == "synthetic":
        from ..data.synthetic import DIFFICULTIES

        if recipe.get("difficulty", "default") not in DIFFICULTIES:
            raise error(
                f"--difficulty must be one of {', '.join(DIFFICULTIES)}, "
                f"got {recipe['difficulty']!r}"
            )
