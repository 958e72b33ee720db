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
import dataclasses
import os
import typing

from ..engine.config import TrainConfig


def _metavar(name: str, hint: typing.Any) -> str:
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if name in ("out", "data_dir"):
        return "DIR"
    if name == "resume":
        return "PATH"
    return {int: "N", float: "X", dict: "YAML"}.get(base, name.split("_")[-1].upper())


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    parser = sub.add_parser(
        name,
        help="train a model (every option of the recipe is a flag; --config YAML)",
        description="Train an image classifier. Every TrainConfig field is a flag; values from "
        "--config YAML are overridden by flags given here. Outputs in --out: config.yaml, "
        "metrics.jsonl, metrics.csv, last.pt, best.pt. Under torchrun, --batch-size is the "
        "global batch, split across processes.",
    )
    parser.add_argument(
        "--config", metavar="YAML", default=argparse.SUPPRESS, help="recipe file of config fields"
    )
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default_factory() if callable(field.default_factory) else field.default
        shown = "none" if default is None else default
        # argparse %-formats help strings: a literal % must be doubled.
        help_text = f"{field.metadata['help']} (default: {shown})".replace("%", "%%")
        hint = hints[field.name]
        # SUPPRESS: only the flags the user gives reach TrainConfig, so YAML values survive.
        if hint is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=help_text,
            )  # fmt: skip
        elif typing.get_origin(hint) is None and hint is list:
            parser.add_argument(flag, nargs="*", metavar="EPOCH", default=argparse.SUPPRESS,
                                help=help_text)  # fmt: skip
        else:
            parser.add_argument(flag, metavar=_metavar(field.name, hint),
                                default=argparse.SUPPRESS, help=help_text)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..engine.train import main as train

    config = TrainConfig.from_args(args)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"val_acc {summary['val_acc']:.4f}  val_loss {summary['val_loss']:.4f}  "
            f"best_val_acc {summary['best_val_acc']:.4f}  ({summary['epochs']} epochs, "
            f"{summary['epoch_time']:.1f} s/epoch)  → {summary['out']}"
        )
    return 0
