"""``attnlab train``: one flag per TrainConfig field, an optional YAML recipe, then train.

The flags are generated from the ``TrainConfig`` dataclass, so the CLI cannot drift from the
config. Precedence: field defaults < ``--config`` YAML < flags given on the command line.
Values are checked by ``TrainConfig`` (one-line errors naming the field, exit code 2).

Example:
    >>> from attnlab.cli import main
    >>> main(["train", "--attn", "nope"])  # doctest: +SKIP
    attnlab: error: TrainConfig.attn: unknown attention 'nope'; valid: none, bam, ca, ...
    2

Typical use::

    attnlab train --model resnet20 --attn cbam --data cifar10 --data-dir data --out runs/x
    torchrun --nproc_per_node 2 -m attnlab train --config recipe.yaml
"""

from __future__ import annotations

import argparse
import os

from ..engine.config import TrainConfig
from ..engine.train import main as train
from .config_flags import add_config_flags


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="train a model (every option of the recipe is a flag; --config YAML)",
        description="Train an image classifier. Every TrainConfig field is a flag; values from "
        "--config YAML are overridden by flags given here. Outputs in --out: config.yaml, "
        "metrics.jsonl, metrics.csv, last.pt, best.pt; --out must be new or empty (--resume "
        "continues a run, --overwrite replaces one). Under torchrun, --batch-size is the global "
        "batch, split across processes.",
    )
    add_config_flags(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    config = TrainConfig.from_args(args)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"val_acc {summary['val_acc']:.4f}  val_loss {summary['val_loss']:.4f}  "
            f"best_val_acc {summary['best_val_acc']:.4f}  ({summary['epochs']} epochs, "
            f"{summary['epoch_time']:.1f} s/epoch)  → {summary['out']}"
        )
    return 0
